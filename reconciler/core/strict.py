"""The base of every spec model: unknown fields are errors, values are immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""What a POSIX shell and every engine accept as an environment variable name."""

SECRET_NAME_PATTERN = r"^RECONCILER_SECRET_[A-Z0-9_]+$"
"""The only variables git may name as a credential (reconciler.core.secrets says why)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

"""cluster.yaml's `gateway:` section: how the OpenAI-compatible endpoint queues, drains and
checks keys. Host settings (where it listens) are flags, never git."""

from __future__ import annotations

from pydantic import Field

from reconciler.core.strict import ENV_NAME_PATTERN, Strict


class GatewayKey(Strict):
    """One client key of the gateway: its name (shown in metrics) and the environment variable of
    the reconciler that holds it. Keys never live in git."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="shown in metrics and logs")
    key_env: str = Field(
        pattern=ENV_NAME_PATTERN, description="environment variable holding the key"
    )


class GatewayConfig(Strict):
    """The OpenAI-compatible endpoint `reconciler run` serves in front of every model."""

    queue_timeout_s: float = Field(
        300, gt=0, le=86400, description="a request for a starting model waits this long, then 503"
    )
    max_queue: int = Field(
        256, ge=0, le=100_000, description="waiting requests per model (429 past it)"
    )
    drain_timeout_s: float = Field(
        30, ge=0, le=3600, description="in-flight requests may finish this long before a stop"
    )
    api_keys: list[GatewayKey] = Field(
        default_factory=list, description="when set, clients need `Authorization: Bearer <key>`"
    )

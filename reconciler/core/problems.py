"""A problem found in desired state, always located as file:line."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    field: str
    message: str
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:
        where = f" {self.field}:" if self.field else ""
        return f"{self.location()}: {self.severity}:{where} {self.message}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

"""Desired state as the core sees it: raw documents with their lines, the problems found in them
(always located as file:line), and the validated result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

from reconciler.core.cluster import ClusterSpec, HostSpec
from reconciler.core.spec import ModelSpec

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


FieldPath = tuple[str | int, ...]

PlainValue = dict[str, "PlainValue"] | list["PlainValue"] | str | int | float | bool | None
"""A YAML document's values once parsed: what JSON can hold (mapping keys are always text)."""


@dataclass(frozen=True)
class SourceDoc:
    """One YAML document: its display path, its plain data, and the line of every field."""

    file: str
    data: dict[str, PlainValue]
    lines: dict[FieldPath, int] = field(default_factory=dict)

    def line_of(self, path: Iterable[str | int]) -> int:
        """Line of the deepest known prefix of `path` (a missing field points at its parent)."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get((), 1)


@dataclass(frozen=True)
class RawDesiredState:
    root: str
    revision: str | None
    cluster: SourceDoc | None
    models: list[SourceDoc]
    problems: list[Problem]
    hosts: list[SourceDoc] = field(default_factory=list)
    """desired-state/hosts/<name>.yaml, one per host of a fleet (none: a one-host repository)"""


@dataclass(frozen=True)
class DesiredState:
    """A valid desired state: what the planner reads."""

    models: dict[str, ModelSpec]
    cluster: ClusterSpec
    revision: str | None = None
    origins: dict[str, tuple[str, int]] = field(default_factory=dict)
    """model id -> (file, line) of its id field, for messages."""
    hosts: dict[str, HostSpec] = field(default_factory=dict)
    """the fleet's hosts by name (hosts/<name>.yaml); empty in a one-host repository"""
    host: str | None = None
    """the host this is the view of (core.fleet.host_view): `models` are the ones it runs and
    `cluster` carries its host fields; None = the whole repository"""
    elsewhere: dict[str, ModelSpec] = field(default_factory=dict)
    """in a host's view: the fleet's models that other hosts run (their `hosts` say which), by
    model id; the gateway forwards their requests"""


@dataclass(frozen=True)
class ValidationResult:
    desired: DesiredState | None
    problems: list[Problem]

    @property
    def valid(self) -> bool:
        return self.desired is not None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

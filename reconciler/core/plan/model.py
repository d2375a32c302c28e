"""The plan's values: actions, outcomes, GPU usage, and the plan itself. Pure data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from reconciler.core.observed import Status
from reconciler.core.problems import Problem
from reconciler.core.secrets import SecretUse

ActionKind = Literal["start", "stop", "restart", "preempt"]


@dataclass(frozen=True, slots=True)
class Action:
    action: ActionKind
    model: str
    gpus: tuple[int, ...]
    memory_mb: int
    """Per GPU, in MiB."""
    port: int | None
    reason: str


class Unschedulable(NamedTuple):
    """A model that cannot be placed; unpacks like a (model, reason) pair."""

    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class GpuUsage:
    index: int
    memory_mb: int
    """Capacity for our engines: total - reserved - unmanaged."""
    used_mb_before: int
    used_mb_after: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a model ends up once the plan is applied: what the state file records."""

    model: str
    status: Status
    gpus: tuple[int, ...] = ()
    memory_mb: int = 0
    port: int | None = None
    priority: int | None = None
    spec_hash: str | None = None
    fallback_for: str | None = None
    reason: str | None = None
    demand: str | None = None
    """`activation: on_demand` models: idle / wanted / running (the reason says why)"""


@dataclass(frozen=True, slots=True)
class Plan:
    revision: str | None
    valid: bool
    problems: tuple[Problem, ...] = ()
    actions: tuple[Action, ...] = ()
    unschedulable: tuple[Unschedulable, ...] = ()
    """Sorted by model."""
    gpus: tuple[GpuUsage, ...] = ()
    models: Mapping[str, Outcome] = field(default_factory=dict)
    """Every desired or observed model -> its outcome, sorted by id."""
    secrets: tuple[SecretUse, ...] = ()
    """Every secret the desired state names and where it goes (`reconciler plan` fills it)."""

    def count(self, action: ActionKind) -> int:
        return sum(a.action == action for a in self.actions)

    def summary(self) -> str:
        """'2 to start, 1 to stop, 1 preempted, 1 unschedulable', or 'no changes'."""
        parts = [
            (self.count("start"), "to start"),
            (self.count("restart"), "to restart"),
            (self.count("stop"), "to stop"),
            (self.count("preempt"), "preempted"),
            (len(self.unschedulable), "unschedulable"),
        ]
        return ", ".join(f"{n} {what}" for n, what in parts if n) or "no changes"


def invalid_plan(revision: str | None, problems: Iterable[Problem]) -> Plan:
    """The plan of an invalid desired state: it changes nothing that runs."""
    return Plan(revision, False, tuple(problems))


def gpu_names(gpus: Iterable[int]) -> str:
    gpus = list(gpus)
    if not gpus:
        return "the CPU"
    return ("GPU " if len(gpus) == 1 else "GPUs ") + ", ".join(map(str, gpus))

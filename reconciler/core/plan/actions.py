"""The plan's values (actions, outcomes, GPU usage, the plan) and the diff between what runs and
the schedule that makes them: the ordered actions and each model's outcome. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from reconciler.core.desired import Problem
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.schedule import Demand, Placement, Running, Schedule
from reconciler.core.secrets import SecretUse
from reconciler.core.spec import ModelSpec

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
class RemoteModel:
    """A model someone else serves, as the plan lists it."""

    id: str
    host: str
    """the endpoint's host: where its requests (and its key) go"""
    enabled: bool = True
    serves_for: tuple[str, ...] = ()
    """local models not placed by this plan whose requests go to it (it is their fallback)"""

    def __str__(self) -> str:
        text = f"remote: {self.id} → {self.host}"
        if not self.enabled:
            text += " (disabled)"
        if self.serves_for:
            text += f" (serves {', '.join(self.serves_for)} while not placed)"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.id,
            "host": self.host,
            "enabled": self.enabled,
            "serves_for": list(self.serves_for),
        }


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
    remote: tuple[RemoteModel, ...] = ()
    """The remote models, by id: listed, never placed (reconciler.core.plan.make)."""

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


class Diff:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        observed: Mapping[str, InstanceRecord],
        hashes: Mapping[str, str],
        demands: Mapping[str, Demand],
        running: Mapping[str, Running],
        result: Schedule,
    ) -> None:
        self.specs, self.observed, self.hashes = specs, observed, hashes
        self.demands, self.running = demands, running
        self.placements = result.placements
        self.preempted = result.preempted
        self.unschedulable = result.unschedulable
        self.fixed = {s.port: s.id for s in specs.values() if s.port is not None}
        self.fallbacks = {s.fallback for s in specs.values() if s.fallback is not None}
        self.port_owner = {p.port: p.id for p in self.placements.values() if p.port is not None}

    def actions(self) -> tuple[Action, ...]:
        stops: list[tuple[OrderKey, Action]] = []
        preempts: list[tuple[OrderKey, Action]] = []
        starts: list[tuple[OrderKey, Action]] = [
            (_high_first(placed), _start(placed, self._start_reason(mid, placed)))
            for mid, placed in self.placements.items()
            if mid not in self.running
        ]
        for mid in sorted(self.running):
            placed = self.placements.get(mid)
            obs = self.observed[mid]
            low_first = (self._priority(mid), mid)
            if mid in self.preempted:
                preempts.append((low_first, _stop(obs, "preempt", self._preempt_reason(mid))))
                if placed:
                    reason = f"moved after preemption by {self.preempted[mid]}"
                    starts.append((_high_first(placed), _start(placed, reason)))
            elif placed is None:
                stops.append((low_first, _stop(obs, "stop", self._stop_reason(mid))))
            elif self._unchanged(mid, obs, placed):
                continue
            elif tuple(sorted(obs.gpus)) == placed.gpus and not self._port_taken(mid, obs):
                why = self._why(mid, obs, placed)
                restart = Action("restart", mid, placed.gpus, placed.memory_mb, placed.port, why)
                starts.append((_high_first(placed), restart))
            else:
                why = self._why(mid, obs, placed)
                # same GPUs here means its port is taken (so it has one): only the port moves
                if tuple(sorted(obs.gpus)) == placed.gpus and obs.port is not None:
                    moving = f"frees port {obs.port} for {self.port_owner[obs.port]}: {why}"
                    moved = f"restarted on port {placed.port}: {why}"
                else:
                    moving = f"moving to {gpu_names(placed.gpus)}: {why}"
                    moved = f"moved from {gpu_names(obs.gpus)}: {why}"
                stops.append((low_first, _stop(obs, "stop", moving)))
                starts.append((_high_first(placed), _start(placed, moved)))
        ordered = [*_in_order(stops), *_in_order(preempts), *_in_order(starts)]
        return tuple(action for _, action in ordered)

    def outcomes(self) -> dict[str, Outcome]:
        return {mid: self._outcome(mid) for mid in sorted(set(self.specs) | set(self.observed))}

    def _outcome(self, mid: str) -> Outcome:
        placed, spec, obs = self.placements.get(mid), self.specs.get(mid), self.observed.get(mid)
        priority = spec.priority if spec else None
        if placed is not None:
            reason = f"fallback for {placed.fallback_for}" if placed.fallback_for else None
            return Outcome(
                mid,
                Status.running,
                placed.gpus,
                placed.memory_mb,
                placed.port,
                placed.priority,
                self.hashes[mid],
                placed.fallback_for,
                reason,
            )
        if mid in self.preempted:
            return Outcome(
                mid, Status.preempted, priority=priority, reason=self._preempt_reason(mid)
            )
        if spec is None:
            return Outcome(mid, Status.stopped, reason="removed from desired state")
        demand = self.demands[mid]
        if demand.blocked:
            h = obs.spec_hash if obs else None
            return Outcome(mid, Status.error, priority=priority, spec_hash=h, reason=demand.blocked)
        if mid in self.unschedulable:
            waiting = obs is not None and obs.status is Status.preempted
            status = Status.preempted if waiting else Status.stopped
            return Outcome(mid, status, priority=priority, reason=self.unschedulable[mid])
        return Outcome(mid, Status.stopped, priority=priority, reason=self._stop_reason(mid))

    def _unchanged(self, mid: str, obs: InstanceRecord, placed: Placement) -> bool:
        same = tuple(sorted(obs.gpus)) == placed.gpus and obs.port == placed.port
        return same and self.running[mid].reusable

    def _port_taken(self, mid: str, obs: InstanceRecord) -> bool:
        """Another model starts on the port this engine leaves: it stops with the stops, before
        anything starts, instead of restarting in turn."""
        return self.port_owner.get(obs.port, mid) != mid if obs.port is not None else False

    def _priority(self, mid: str) -> int:
        spec = self.specs.get(mid)
        return spec.priority if spec else 0

    def _stop_reason(self, mid: str) -> str:
        spec = self.specs.get(mid)
        if spec is None:
            return "removed from desired state"
        if mid in self.unschedulable:
            return f"cannot be placed: {self.unschedulable[mid]}"
        if not spec.enabled and mid in self.fallbacks:
            return "disabled and no longer needed as a fallback"
        return "disabled (enabled: false)"

    def _preempt_reason(self, mid: str) -> str:
        by = self.preempted[mid]
        placed = self.placements.get(by)
        at = f" (priority {placed.priority})" if placed else ""
        return f"preempted by {by}{at}"

    def _start_reason(self, mid: str, placed: Placement) -> str:
        if placed.fallback_for:
            primary = placed.fallback_for
            why = self.unschedulable.get(primary)
            if why is None and primary in self.preempted:
                why = self._preempt_reason(primary)
            return f"fallback for {primary} ({why})" if why else f"fallback for {primary}"
        obs = self.observed.get(mid)
        if obs is None:
            return "not running yet"
        if obs.status is Status.preempted:
            return "room returned after preemption"
        if obs.status is Status.error:
            if obs.given_up:
                return "spec changed after giving up"
            return f"restart after error: {obs.last_error or 'no error recorded'}"
        return "not running"

    def _why(self, mid: str, obs: InstanceRecord, placed: Placement) -> str:
        """Why a running engine restarts or moves."""
        spec = self.specs[mid]
        causes = []
        if obs.status is Status.stopping:
            causes.append("it was stopping")
        if obs.spec_hash not in (None, self.hashes[mid]):
            causes.append("spec changed")
        count = spec.resource_requirements.gpu_count
        if spec.gpu_devices and set(spec.gpu_devices) != set(obs.gpus):
            causes.append(f"pinned to {gpu_names(sorted(spec.gpu_devices))}")
        elif len(obs.gpus) != count:
            causes.append(f"needs {count} GPU(s), runs on {len(obs.gpus)}")
        if obs.port != placed.port:
            owner = self.fixed.get(obs.port) if obs.port is not None else None
            if owner is not None and owner != mid:
                causes.append(f"port {obs.port} is fixed for {owner}")
            else:
                causes.append(f"port {obs.port} -> {placed.port}")
        return "; ".join(causes) or "it no longer fits where it runs"


OrderKey = tuple[int, str]
"""(priority or its negation, model id): the order of actions within stops, preempts, starts."""


def _in_order(keyed: list[tuple[OrderKey, Action]]) -> list[tuple[OrderKey, Action]]:
    return sorted(keyed, key=lambda item: item[0])


def _high_first(placed: Placement) -> OrderKey:
    return (-placed.priority, placed.id)


def _start(placed: Placement, reason: str) -> Action:
    return Action("start", placed.id, placed.gpus, placed.memory_mb, placed.port, reason)


def _stop(obs: InstanceRecord, kind: ActionKind, reason: str) -> Action:
    return Action(kind, obs.id, tuple(sorted(obs.gpus)), obs.memory_mb, obs.port, reason)

"""The plan: what to stop, preempt, start and restart so that what runs matches the desired state.
PURE: no I/O, no clock, no randomness; the same input gives the same plan, byte for byte.

`make_plan` diffs desired against observed through `schedule`. The spec hash decides restarts
(an observed hash of None counts as matching); a change of priority alone restarts nothing; an
engine on GPUs that violate a new pin or gpu_count restarts. An engine that must move to other GPUs
is a stop (with the stops, so that its memory is free before anything starts) and a start.

Order: stops, then preemptions (each lowest priority first, ties by id), then starts and restarts,
highest priority first (ties by id). The plan of a converged system has no actions.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from reconciler.core.desired import DesiredState
from reconciler.core.gpu import GPUInfo
from reconciler.core.observed import ObservedModel, Status
from reconciler.core.problems import Problem
from reconciler.core.schedule import (
    Demand,
    GpuCapacity,
    Placement,
    Running,
    Schedule,
    capacities,
    schedule,
)
from reconciler.core.spec import ModelSpec

ActionKind = Literal["start", "stop", "restart", "preempt"]


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class GpuUsage:
    index: int
    memory_mb: int
    """Capacity for our engines: total - reserved - unmanaged."""
    used_mb_before: int
    used_mb_after: int


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


def make_plan(
    desired: DesiredState,
    observed: Mapping[str, ObservedModel],
    gpus: Sequence[GPUInfo],
    memory: Mapping[str, int | None],
    problems: Iterable[Problem] = (),
) -> Plan:
    """Diff `desired` against `observed`. `memory`: MiB per GPU of each model (None = unknown)."""
    hashes = {mid: spec.spec_hash() for mid, spec in desired.models.items()}
    demands = {
        mid: _demand(spec, memory.get(mid), observed.get(mid), hashes[mid])
        for mid, spec in sorted(desired.models.items())
    }
    running = {
        mid: _running(obs, desired.models.get(mid), hashes.get(mid))
        for mid, obs in sorted(observed.items())
        if obs.occupies
    }
    caps = capacities(gpus, desired.cluster.reserved_memory_mb)
    result = schedule(
        list(demands.values()),
        list(running.values()),
        caps,
        placement=desired.cluster.placement,
        port_range=desired.cluster.port_range,
    )
    diff = _Diff(desired.models, observed, hashes, demands, running, result)
    return Plan(
        revision=desired.revision,
        valid=True,
        problems=tuple(problems),
        actions=diff.actions(),
        unschedulable=tuple(Unschedulable(m, r) for m, r in result.unschedulable.items()),
        gpus=_usage(caps, observed, result.placements),
        models=diff.outcomes(),
    )


def converged_observed(
    plan: Plan, previous: Mapping[str, ObservedModel]
) -> dict[str, ObservedModel]:
    """The observed state a host has once it applied `plan` successfully."""
    if not plan.valid:
        return dict(previous)
    result: dict[str, ObservedModel] = {}
    for mid, out in plan.models.items():
        before = previous.get(mid)
        if out.status is Status.running:
            result[mid] = ObservedModel(
                mid, Status.running, out.gpus, out.memory_mb, out.port, out.spec_hash
            )
        elif out.status is Status.preempted:
            result[mid] = ObservedModel(mid, Status.preempted)
        elif out.status is Status.error and before is not None:
            result[mid] = before  # gave up: stays as it is until its spec changes
        elif before is not None:
            result[mid] = ObservedModel(mid, Status.stopped)
    return result


# -- from specs and observations to scheduler input ----------------------------------------


def _demand(spec: ModelSpec, memory: int | None, obs: ObservedModel | None, h: str) -> Demand:
    count = spec.resource_requirements.gpu_count
    blocked = None
    # a changed spec gets a new chance: "stays in error until its spec changes"
    if obs is not None and obs.given_up and not obs.occupies and obs.spec_hash in (None, h):
        error = obs.last_error or "no error recorded"
        blocked = f"gave up after {spec.retry_policy.max_retries} retries: {error}"
    return Demand(
        id=spec.id,
        priority=spec.priority,
        gpu_count=count,
        memory_mb=memory if count else 0,
        pinned=tuple(sorted(spec.gpu_devices)),
        port=spec.port,
        fallback=spec.fallback,
        enabled=spec.enabled,
        blocked=blocked,
    )


def _running(obs: ObservedModel, spec: ModelSpec | None, h: str | None) -> Running:
    gpus = tuple(sorted(obs.gpus))
    return Running(obs.id, gpus, obs.memory_mb, obs.port, _reusable(obs, spec, h))


def _reusable(obs: ObservedModel, spec: ModelSpec | None, h: str | None) -> bool:
    """The engine may stay as it is: same spec, on GPUs its pin and gpu_count allow."""
    if spec is None or obs.status not in (Status.running, Status.starting):
        return False
    if obs.spec_hash not in (None, h):
        return False
    if spec.gpu_devices and set(spec.gpu_devices) != set(obs.gpus):
        return False
    return len(obs.gpus) == spec.resource_requirements.gpu_count


# -- the diff ------------------------------------------------------------------------------


class _Diff:
    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        observed: Mapping[str, ObservedModel],
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

    def actions(self) -> tuple[Action, ...]:
        stops: list[tuple[tuple, Action]] = []
        preempts: list[tuple[tuple, Action]] = []
        starts: list[tuple[tuple, Action]] = []
        for mid in sorted(set(self.running) | set(self.placements)):
            placed = self.placements.get(mid)
            obs = self.observed[mid] if mid in self.running else None
            low_first = (self._priority(mid), mid)
            high_first = (-placed.priority, mid) if placed else ()
            if obs is None:
                starts.append((high_first, _start(placed, self._start_reason(mid, placed))))
            elif mid in self.preempted:
                preempts.append((low_first, _stop(obs, "preempt", self._preempt_reason(mid))))
                if placed:
                    reason = f"moved after preemption by {self.preempted[mid]}"
                    starts.append((high_first, _start(placed, reason)))
            elif placed is None:
                stops.append((low_first, _stop(obs, "stop", self._stop_reason(mid))))
            elif self._unchanged(mid, obs, placed):
                continue
            elif tuple(sorted(obs.gpus)) == placed.gpus:
                why = self._why(mid, obs, placed)
                restart = Action("restart", mid, placed.gpus, placed.memory_mb, placed.port, why)
                starts.append((high_first, restart))
            else:
                why = self._why(mid, obs, placed)
                moving = f"moving to {_gpu_names(placed.gpus)}: {why}"
                stops.append((low_first, _stop(obs, "stop", moving)))
                moved = f"moved from {_gpu_names(obs.gpus)}: {why}"
                starts.append((high_first, _start(placed, moved)))
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

    def _unchanged(self, mid: str, obs: ObservedModel, placed: Placement) -> bool:
        same = tuple(sorted(obs.gpus)) == placed.gpus and obs.port == placed.port
        return same and self.running[mid].reusable

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

    def _why(self, mid: str, obs: ObservedModel, placed: Placement) -> str:
        """Why a running engine restarts or moves."""
        spec = self.specs[mid]
        causes = []
        if obs.status is Status.stopping:
            causes.append("it was stopping")
        if obs.spec_hash not in (None, self.hashes[mid]):
            causes.append("spec changed")
        count = spec.resource_requirements.gpu_count
        if spec.gpu_devices and set(spec.gpu_devices) != set(obs.gpus):
            causes.append(f"pinned to {_gpu_names(sorted(spec.gpu_devices))}")
        elif len(obs.gpus) != count:
            causes.append(f"needs {count} GPU(s), runs on {len(obs.gpus)}")
        if obs.port != placed.port:
            owner = self.fixed.get(obs.port) if obs.port is not None else None
            if owner is not None and owner != mid:
                causes.append(f"port {obs.port} is fixed for {owner}")
            else:
                causes.append(f"port {obs.port} -> {placed.port}")
        return "; ".join(causes) or "it no longer fits where it runs"


def _in_order(keyed: list[tuple[tuple, Action]]) -> list[tuple[tuple, Action]]:
    return sorted(keyed, key=lambda item: item[0])


def _start(placed: Placement, reason: str) -> Action:
    return Action("start", placed.id, placed.gpus, placed.memory_mb, placed.port, reason)


def _stop(obs: ObservedModel, kind: ActionKind, reason: str) -> Action:
    return Action(kind, obs.id, tuple(sorted(obs.gpus)), obs.memory_mb, obs.port, reason)


def _gpu_names(gpus: Iterable[int]) -> str:
    gpus = list(gpus)
    if not gpus:
        return "the CPU"
    return ("GPU " if len(gpus) == 1 else "GPUs ") + ", ".join(map(str, gpus))


def _usage(
    caps: Sequence[GpuCapacity],
    observed: Mapping[str, ObservedModel],
    placements: Mapping[str, Placement],
) -> tuple[GpuUsage, ...]:
    before: Counter[int] = Counter()
    for obs in observed.values():
        if obs.occupies:
            for g in obs.gpus:
                before[g] += obs.memory_mb
    after: Counter[int] = Counter()
    for p in placements.values():
        for g in p.gpus:
            after[g] += p.memory_mb
    return tuple(GpuUsage(c.index, c.capacity_mb, before[c.index], after[c.index]) for c in caps)


# -- renderers -----------------------------------------------------------------------------


def render_json(plan: Plan) -> str:
    """The plan as JSON: stable keys and order, byte-identical for the same plan."""
    document = {
        "revision": plan.revision,
        "valid": plan.valid,
        "problems": [p.to_dict() for p in plan.problems],
        "actions": [
            {
                "action": a.action,
                "model": a.model,
                "gpus": list(a.gpus),
                "memory_mb": a.memory_mb,
                "port": a.port,
                "reason": a.reason,
            }
            for a in plan.actions
        ],
        "unschedulable": [{"model": m, "reason": r} for m, r in plan.unschedulable],
        "gpus": [
            {"index": g.index, "memory_mb": g.memory_mb, "used_mb_after": g.used_mb_after}
            for g in plan.gpus
        ],
    }
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)


def render_text(plan: Plan) -> str:
    """The plan for a terminal."""
    revision = plan.revision or "the working tree"
    if not plan.valid:
        lines = [
            f"Desired state at {revision} is invalid: nothing changes "
            "(the last valid desired state stays in force).",
        ]
        return "\n".join([*lines, *(f"  {p}" for p in plan.problems)])
    lines = [f"Plan for {revision}: {plan.summary()}"]
    if not plan.actions:
        lines.append("  nothing to do: what runs matches the desired state")
    width = max((len(a.model) for a in plan.actions), default=0)
    for i, a in enumerate(plan.actions, 1):
        where = f"{_gpu_names(a.gpus)}, {a.memory_mb} MiB" if a.gpus else "the CPU"
        port = f", port {a.port}" if a.port is not None else ""
        lines.append(f"  {i}. {a.action:<8} {a.model:<{width}}  [{where}{port}]  {a.reason}")
    if plan.unschedulable:
        lines.append("Unschedulable:")
        lines.extend(f"  {m}: {r}" for m, r in plan.unschedulable)
    if plan.gpus:
        lines.append("GPU memory (MiB, before -> after, of capacity):")
        lines.extend(
            f"  GPU {g.index}: {g.used_mb_before} -> {g.used_mb_after} of {g.memory_mb}"
            for g in plan.gpus
        )
    if plan.problems:
        lines.append("Problems:")
        lines.extend(f"  {p}" for p in plan.problems)
    return "\n".join(lines)


def render_markdown(plan: Plan, spec_diff: str | None = None) -> str:
    """The plan as a pull-request comment."""
    revision = f"`{plan.revision}`" if plan.revision else "the working tree"
    out = [f"### Reconciler plan for {revision}", ""]
    if not plan.valid:
        out += [
            "**Invalid desired state: nothing changes** (the last valid state stays in force).",
            "",
        ]
    else:
        out += [f"**{plan.summary()}**", ""]
        out += _markdown_actions(plan.actions)
        if plan.unschedulable:
            out += ["#### Unschedulable", "", "| Model | Reason |", "|---|---|"]
            out += [f"| `{m}` | {_cell(r)} |" for m, r in plan.unschedulable] + [""]
        if plan.gpus:
            out += [
                "#### GPU memory",
                "",
                "| GPU | Capacity | Before | After |",
                "|--:|--:|--:|--:|",
            ]
            out += [
                f"| {g.index} | {g.memory_mb} MiB | {g.used_mb_before} MiB "
                f"| {g.used_mb_after} MiB |"
                for g in plan.gpus
            ] + [""]
    if plan.problems:
        out += ["#### Validation problems", ""]
        out += [
            f"- `{p.location()}` {p.severity}"
            + (f" `{p.field}`" if p.field else "")
            + f": {_cell(p.message)}"
            for p in plan.problems
        ] + [""]
    if spec_diff:
        fence = "```"
        while fence in spec_diff:
            fence += "`"
        out += ["<details><summary>Spec diff</summary>", "", f"{fence}diff", spec_diff.rstrip("\n")]
        out += [fence, "", "</details>", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _markdown_actions(actions: Sequence[Action]) -> list[str]:
    if not actions:
        return ["Nothing to do: what runs matches the desired state.", ""]
    rows = [
        "| # | Action | Model | GPUs | Memory | Port | Reason |",
        "|--:|---|---|---|--:|--:|---|",
    ]
    for i, a in enumerate(actions, 1):
        gpus = ", ".join(map(str, a.gpus)) or "CPU"
        memory = f"{a.memory_mb} MiB" if a.gpus else ""
        port = "" if a.port is None else str(a.port)
        rows.append(
            f"| {i} | {a.action} | `{a.model}` | {gpus} | {memory} | {port} | {_cell(a.reason)} |"
        )
    return [*rows, ""]


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

"""make_plan: from desired and observed state to a plan, through the scheduler."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.core.desired import DesiredState, Problem
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan.actions import Diff, GpuUsage, Plan, Unschedulable
from reconciler.core.schedule import (
    Demand,
    GpuCapacity,
    Placement,
    Running,
    Schedule,
    capacities,
    schedule,
)
from reconciler.core.schedule.values import GPUInfo
from reconciler.core.spec import ModelSpec


def make_plan(
    desired: DesiredState,
    observed: Mapping[str, InstanceRecord],
    gpus: Sequence[GPUInfo],
    memory: Mapping[str, int | None],
    problems: Iterable[Problem] = (),
) -> Plan:
    """Diff `desired` against `observed`. `memory`: MiB per GPU of each model (None = unknown)."""
    s = scheduled(desired, observed, gpus, memory)
    diff = Diff(desired.models, observed, s.hashes, s.demands, s.running, s.result)
    return Plan(
        revision=desired.revision,
        valid=True,
        problems=tuple(problems),
        actions=diff.actions(),
        unschedulable=tuple(Unschedulable(m, r) for m, r in s.result.unschedulable.items()),
        gpus=_usage(s.capacities, observed, s.result.placements),
        models=diff.outcomes(),
    )


@dataclass(frozen=True, slots=True)
class Scheduled:
    """The scheduler's input, made from specs and observations, and what it decided."""

    hashes: dict[str, str]
    demands: dict[str, Demand]
    running: dict[str, Running]
    capacities: list[GpuCapacity]
    result: Schedule


def scheduled(
    desired: DesiredState,
    observed: Mapping[str, InstanceRecord],
    gpus: Sequence[GPUInfo],
    memory: Mapping[str, int | None],
) -> Scheduled:
    """Where the scheduler puts each model, without the plan's diff: make_plan's first half,
    alone for a search that compares candidate inputs (on-demand activation's room search)
    and then makes one plan of the one it chose."""
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
    return Scheduled(hashes, demands, running, caps, result)


def converged_observed(
    plan: Plan, previous: Mapping[str, InstanceRecord]
) -> dict[str, InstanceRecord]:
    """The observed state a host has once it applied `plan` successfully."""
    if not plan.valid:
        return dict(previous)
    result: dict[str, InstanceRecord] = {}
    for mid, out in plan.models.items():
        before = previous.get(mid)
        if out.status is Status.running:
            result[mid] = InstanceRecord(
                mid,
                Status.running,
                gpus=out.gpus,
                memory_mb=out.memory_mb,
                port=out.port,
                spec_hash=out.spec_hash,
            )
        elif out.status is Status.preempted:
            result[mid] = InstanceRecord(mid, Status.preempted)
        elif out.status is Status.error and before is not None:
            result[mid] = before  # gave up: stays as it is until its spec changes
        elif before is not None:
            result[mid] = InstanceRecord(mid, Status.stopped)
    return result


# -- from specs and observations to scheduler input ----------------------------------------


def _demand(spec: ModelSpec, memory: int | None, obs: InstanceRecord | None, h: str) -> Demand:
    count = spec.resource_requirements.gpu_count
    blocked = None
    # a changed spec gets a new chance: "stays in error until its spec changes"
    if obs is not None and obs.given_up and not obs.occupies and obs.spec_hash in (None, h):
        error = obs.last_error or "no error recorded"
        # retries ran out, or the start failed in a way no retry fixes: either way, not retried
        blocked = f"in error, not retried: {error}"
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


def _running(obs: InstanceRecord, spec: ModelSpec | None, h: str | None) -> Running:
    gpus = tuple(sorted(obs.gpus))
    return Running(obs.id, gpus, obs.memory_mb, obs.port, _reusable(obs, spec, h))


def _reusable(obs: InstanceRecord, spec: ModelSpec | None, h: str | None) -> bool:
    """The engine may stay as it is: same spec, on GPUs its pin and gpu_count allow."""
    if spec is None or obs.status not in (Status.running, Status.starting):
        return False
    if obs.spec_hash not in (None, h):
        return False
    if spec.gpu_devices and set(spec.gpu_devices) != set(obs.gpus):
        return False
    return len(obs.gpus) == spec.resource_requirements.gpu_count


def _usage(
    caps: Sequence[GpuCapacity],
    observed: Mapping[str, InstanceRecord],
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

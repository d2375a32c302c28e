"""make_plan: from desired and observed state to a plan, through the scheduler."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from reconciler.core.desired import DesiredState
from reconciler.core.gpu import GPUInfo
from reconciler.core.observed import ObservedModel, Status
from reconciler.core.plan.actions import Diff
from reconciler.core.plan.model import GpuUsage, Plan, Unschedulable
from reconciler.core.problems import Problem
from reconciler.core.schedule import (
    Demand,
    GpuCapacity,
    Placement,
    Running,
    capacities,
    schedule,
)
from reconciler.core.spec import ModelSpec


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
    diff = Diff(desired.models, observed, hashes, demands, running, result)
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

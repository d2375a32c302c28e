"""make_plan: from desired and observed state to a plan, through the scheduler; and remote models
in the plan: never placed, preempted or given a GPU, only listed.

The scheduler sees the local models alone (`local_part`): a remote model holds nothing of this
host, so adding one to any desired state changes no placement. A local model whose fallback is
remote keeps no fallback in the scheduler's eyes (nothing local is started for it); while it is
not placed, the plan says that its requests go to the remote model (`with_remote`), which the
gateway does. The other way round, a remote model whose endpoint is in error (its record, kept
by the loop's probes) has its local fallback run, as a crashed engine's would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from reconciler.core.desired import DesiredState, Problem
from reconciler.core.engine_args import endpoint_host
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan.actions import Diff, GpuUsage, Outcome, Plan, RemoteModel, Unschedulable
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


@dataclass(frozen=True)
class Split:
    """A desired state cut for the scheduler."""

    local: DesiredState
    """local models only; a remote fallback dropped, a stand-in enabled"""
    remote: dict[str, ModelSpec]
    """the remote models taken out"""
    standins: dict[str, str]
    """local model -> the remote model it stands in for: the fallback of a remote model whose
    endpoint is in error runs (even when disabled, as a local model's fallback would)"""


def local_part(desired: DesiredState, observed: Mapping[str, InstanceRecord]) -> Split:
    """The desired state the scheduler sees, and what was taken out of it."""
    remote = {mid: spec for mid, spec in desired.models.items() if spec.is_remote}
    if not remote:
        return Split(desired, {}, {})
    standins = {
        spec.fallback: mid
        for mid, spec in sorted(remote.items(), reverse=True)  # one stand-in each: lowest id wins
        if spec.enabled
        and _down(observed.get(mid))
        and spec.fallback in desired.models
        and spec.fallback not in remote
    }
    models = {
        mid: _for_scheduler(spec, remote, mid in standins)
        for mid, spec in desired.models.items()
        if mid not in remote
    }
    return Split(replace(desired, models=models), remote, standins)


def _down(record: InstanceRecord | None) -> bool:
    return record is not None and record.status is Status.error


def _for_scheduler(spec: ModelSpec, remote: Mapping[str, ModelSpec], standin: bool) -> ModelSpec:
    update: dict[str, object] = {}
    if spec.fallback in remote:
        update["fallback"] = None  # the gateway sends its requests there; nothing local starts
    if standin and not spec.enabled:
        update["enabled"] = True
    return spec.model_copy(update=update) if update else spec


def local_observed(
    observed: Mapping[str, InstanceRecord], remote: Mapping[str, ModelSpec]
) -> dict[str, InstanceRecord]:
    """The observed state less the remote models' records (their status is their endpoint's)."""
    return {mid: record for mid, record in observed.items() if mid not in remote}


def with_remote(plan: Plan, split: Split, specs: Mapping[str, ModelSpec]) -> Plan:
    """`plan` with the remote models listed, each local model that the plan does not run and
    whose fallback is remote sent there, and each stand-in said to be one."""
    remote = split.remote
    if not remote:
        return plan
    served: dict[str, list[str]] = {mid: [] for mid in remote}
    models = dict(plan.models)
    unschedulable = list(plan.unschedulable)
    for mid, outcome in plan.models.items():
        spec = specs.get(mid)
        target = remote.get(spec.fallback or "") if spec is not None else None
        if spec is None or target is None or not _waits(outcome, spec):
            continue
        note = f"its requests go to remote fallback {target.id} ({_host(target)})"
        served[target.id].append(mid)
        models[mid] = replace(outcome, reason=_joined(outcome.reason, note))
        unschedulable = [
            Unschedulable(u.model, _joined(u.reason, note)) if u.model == mid else u
            for u in unschedulable
        ]
    reasons = {
        mid: f"fallback for {rid} (its endpoint is down)" for mid, rid in split.standins.items()
    }
    for mid, rid in split.standins.items():
        if mid in models and models[mid].status is Status.running:
            models[mid] = replace(models[mid], fallback_for=rid, reason=reasons[mid])
    actions = tuple(
        replace(a, reason=reasons[a.model]) if a.action == "start" and a.model in reasons else a
        for a in plan.actions
    )
    listed = tuple(
        RemoteModel(mid, _host(spec), spec.enabled, tuple(served[mid]))
        for mid, spec in sorted(remote.items())
    )
    return replace(
        plan, actions=actions, models=models, unschedulable=tuple(unschedulable), remote=listed
    )


def _waits(outcome: Outcome, spec: ModelSpec) -> bool:
    """An enabled local model that this plan does not run: its clients need someone else."""
    return spec.enabled and outcome.status is not Status.running


def _host(spec: ModelSpec) -> str:
    return endpoint_host(spec.endpoint or "") or "no endpoint"


def _joined(reason: str | None, note: str) -> str:
    return f"{reason}; {note}" if reason else note

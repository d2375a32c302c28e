"""Remote models in the plan: never placed, preempted or given a GPU, only listed. Pure.

The scheduler sees the local models alone (`local_part`): a remote model holds nothing of this
host, so adding one to any desired state changes no placement. A local model whose fallback is
remote keeps no fallback in the scheduler's eyes (nothing local is started for it); while it is
not placed, the plan says that its requests go to the remote model (`with_remote`), which the
gateway does. The other way round, a remote model whose endpoint is in error (its record, kept
by the loop's probes) has its local fallback run, as a crashed engine's would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan.actions import Outcome, Plan, RemoteModel, Unschedulable
from reconciler.core.remote_checks import endpoint_host
from reconciler.core.spec import ModelSpec


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

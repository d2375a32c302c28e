"""Remote models in the plan: never placed, preempted or given a GPU, only listed. Pure.

The scheduler sees the local models alone (`local_part`): a remote model holds nothing of this
host, so adding one to any desired state changes no placement. A local model whose fallback is
remote keeps no fallback in the scheduler's eyes (nothing local is started for it); while it is
not placed, the plan says that its requests go to the remote model (`with_remote`), which the
gateway does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan.actions import Outcome, Plan, RemoteModel, Unschedulable
from reconciler.core.remote_checks import endpoint_host
from reconciler.core.spec import ModelSpec


def local_part(desired: DesiredState) -> tuple[DesiredState, dict[str, ModelSpec]]:
    """The desired state the scheduler sees (local models only, with no remote fallback), and
    the remote models taken out of it."""
    remote = {mid: spec for mid, spec in desired.models.items() if spec.is_remote}
    if not remote:
        return desired, {}
    models = {
        mid: spec.model_copy(update={"fallback": None}) if spec.fallback in remote else spec
        for mid, spec in desired.models.items()
        if mid not in remote
    }
    return replace(desired, models=models), remote


def local_observed(
    observed: Mapping[str, InstanceRecord], remote: Mapping[str, ModelSpec]
) -> dict[str, InstanceRecord]:
    """The observed state less the remote models' records (their status is their endpoint's)."""
    return {mid: record for mid, record in observed.items() if mid not in remote}


def with_remote(
    plan: Plan, remote: Mapping[str, ModelSpec], specs: Mapping[str, ModelSpec]
) -> Plan:
    """`plan` with the remote models listed, and each local model that the plan does not run
    and whose fallback is remote sent there."""
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
    listed = tuple(
        RemoteModel(mid, _host(spec), spec.enabled, tuple(served[mid]))
        for mid, spec in sorted(remote.items())
    )
    return replace(plan, models=models, unschedulable=tuple(unschedulable), remote=listed)


def _waits(outcome: Outcome, spec: ModelSpec) -> bool:
    """An enabled local model that this plan does not run: its clients need someone else."""
    return spec.enabled and outcome.status is not Status.running


def _host(spec: ModelSpec) -> str:
    return endpoint_host(spec.endpoint or "") or "no endpoint"


def _joined(reason: str | None, note: str) -> str:
    return f"{reason}; {note}" if reason else note

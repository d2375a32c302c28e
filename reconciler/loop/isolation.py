"""One model's problem is that model's: planning that survives a spec it cannot use.

Validation should refuse what an engine cannot use, but the loop does not bet on it: a spec whose
hash, record, memory estimate or plan raises (a number of thousands of digits, a value the
estimate overflows on, a bug) is set aside with the reason, and the others are planned without it.
The pass then records the set-aside model as `error` and stops its engine, if one runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from reconciler.core.desired import DesiredState
from reconciler.core.gpu import GPUInfo
from reconciler.core.observed import ObservedModel
from reconciler.core.plan import Plan, make_plan
from reconciler.core.problems import Problem
from reconciler.gpus import inventory
from reconciler.loop.planning import Requirements
from reconciler.loop.supervision import describe

log = logging.getLogger("reconciler.loop.isolation")


def set_aside(desired: DesiredState) -> tuple[DesiredState, dict[str, str]]:
    """The desired state without the models whose spec cannot even be hashed or recorded, and
    why each was set aside."""
    broken: dict[str, str] = {}
    for model_id, spec in desired.models.items():
        try:
            spec.spec_hash()
            json.dumps(spec.model_dump(mode="json"))
        except Exception as exc:
            broken[model_id] = f"the spec cannot be used: {describe(exc)}"
    return without(desired, broken), broken


def without(desired: DesiredState, removed: Collection[str]) -> DesiredState:
    """`desired` less `removed`; a fallback that names a removed model is dropped (the planner
    needs every fallback to exist)."""
    if not removed:
        return desired
    models = {
        mid: spec if spec.fallback not in removed else spec.model_copy(update={"fallback": None})
        for mid, spec in desired.models.items()
        if mid not in removed
    }
    return replace(desired, models=models)


def plan_isolated(
    desired: DesiredState,
    observed: Mapping[str, ObservedModel],
    problems: Sequence[Problem],
    *,
    managed_pids: Collection[int],
    requirements: Requirements,
) -> tuple[Plan, dict[str, str]]:
    """Plan like reconciler.loop.planning.plan_desired, setting aside each model whose memory
    estimate or plan raises. InventoryError (the host's GPUs are unknown) is everyone's problem
    and propagates."""
    gpus = inventory(desired.cluster, managed_pids)
    gpu_total = min((g.memory_total for g in gpus), default=None)
    memory: dict[str, int | None] = {}
    broken: dict[str, str] = {}
    for model_id, spec in desired.models.items():
        try:
            memory[model_id] = requirements.of(spec, gpu_total)
        except Exception as exc:
            broken[model_id] = f"its memory cannot be estimated: {describe(exc)}"
    usable = without(desired, broken)
    try:
        return make_plan(usable, _unseen(observed, broken), gpus, memory, problems), broken
    except Exception:
        log.exception("planning failed; looking for the model that makes it fail")
    culprits = _culprits(usable, observed, gpus, memory)
    if not culprits:
        raise RuntimeError("planning fails, and no single model makes it fail")
    broken.update(culprits)
    usable = without(usable, culprits)
    return make_plan(usable, _unseen(observed, broken), gpus, memory, problems), broken


def _unseen(
    observed: Mapping[str, ObservedModel], removed: Collection[str]
) -> dict[str, ObservedModel]:
    """What the planner may see: a set-aside model's engine is the pass's to stop, not the
    planner's (a planned stop would record it as stopped, hiding its error)."""
    return {k: v for k, v in observed.items() if k not in removed}


def _culprits(
    desired: DesiredState,
    observed: Mapping[str, ObservedModel],
    gpus: Sequence[GPUInfo],
    memory: Mapping[str, int | None],
) -> dict[str, str]:
    """The models that make a plan fail on their own."""
    found = {}
    for model_id in sorted(desired.models):
        alone = without(desired, set(desired.models) - {model_id})
        try:
            make_plan(alone, {k: v for k, v in observed.items() if k == model_id}, gpus, memory)
        except Exception as exc:
            found[model_id] = f"it cannot be planned: {describe(exc)}"
    return found

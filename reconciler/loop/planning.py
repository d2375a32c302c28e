"""Gather what the pure planner needs from this host (GPU inventory, memory requirements) and plan.

Shared by `reconciler plan` (offline, against an observed-state file) and the reconcile pass.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from reconciler.core.desired import DesiredState
from reconciler.core.gpu import GPUInfo
from reconciler.core.observed import ObservedModel
from reconciler.core.plan import Plan, make_plan
from reconciler.core.problems import Problem
from reconciler.core.spec import ModelSpec
from reconciler.gpus import inventory


class Requirements:
    """MiB per GPU of each model: the spec's number, else an estimate (cached per spec hash,
    so that a daemon reads each model's header once, not every pass)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, int | None], int | None] = {}

    def of(self, spec: ModelSpec, gpu_total_mb: int | None) -> int | None:
        if spec.resource_requirements.gpu_memory_mb is not None:
            return spec.resource_requirements.gpu_memory_mb
        key = (spec.id, spec.spec_hash(), gpu_total_mb)
        if key not in self._cache:
            self._cache[key] = _estimate(spec, gpu_total_mb)
        return self._cache[key]

    def all(self, desired: DesiredState, gpus: Sequence[GPUInfo]) -> dict[str, int | None]:
        gpu_total = min((g.memory_total for g in gpus), default=None)
        return {mid: self.of(spec, gpu_total) for mid, spec in desired.models.items()}


def _estimate(spec: ModelSpec, gpu_total_mb: int | None) -> int | None:
    from reconciler.engines.registry import estimate_spec

    return estimate_spec(spec, gpu_total_mb).per_gpu_mb  # unreadable files: unknown


def plan_desired(
    desired: DesiredState,
    observed: Mapping[str, ObservedModel],
    problems: Sequence[Problem] = (),
    *,
    managed_pids: Collection[int] = (),
    requirements: Requirements | None = None,
) -> Plan:
    """Plan `desired` against `observed` on this host's GPUs (InventoryError when unknown)."""
    gpus = inventory(desired.cluster, managed_pids)
    memory = (requirements or Requirements()).all(desired, gpus)
    return make_plan(desired, observed, gpus, memory, problems)

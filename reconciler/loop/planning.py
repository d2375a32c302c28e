"""Gather what the pure planner needs from this host (GPU inventory, memory requirements) and plan.

Shared by `reconciler plan` (offline, against an observed-state file) and the reconcile pass.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from reconciler.core.activation import annotate, decide, planned
from reconciler.core.desired import DesiredState
from reconciler.core.gpu import GPUInfo
from reconciler.core.memory import MemoryFigures, Reservation, reservation
from reconciler.core.observed import ObservedModel
from reconciler.core.plan import Plan, make_plan
from reconciler.core.problems import Problem
from reconciler.core.replicas import expand
from reconciler.core.spec import ModelSpec
from reconciler.engines.registry import estimate_spec
from reconciler.gpus import inventory

LearnedLookup = Callable[[str, str], MemoryFigures | None]
"""(model id, spec hash) -> what was measured of it on this host, if anything."""


class Requirements:
    """MiB per GPU of each model: the spec's number; else the measured peak plus a margin once an
    engine of that spec hash has run here; else the estimate from its files (cached per spec
    hash, so that a daemon reads each model's header once, not every pass)."""

    def __init__(self, learned: LearnedLookup | None = None) -> None:
        self._cache: dict[tuple[str, str, int | None], int | None] = {}
        self._latest: dict[tuple[str, str], int | None] = {}
        self._learned = learned

    def estimate_of(self, spec: ModelSpec, gpu_total_mb: int | None = None) -> int | None:
        key = (spec.id, spec.spec_hash(), gpu_total_mb)
        if key not in self._cache:
            self._cache[key] = _estimate(spec, gpu_total_mb)
            self._latest[key[:2]] = self._cache[key]
        return self._cache[key]

    def cached_estimate(self, spec: ModelSpec) -> int | None:
        """The estimate if one was made already (never reads model files: for readers such as
        the API, which must not take the loop's time)."""
        return self._latest.get((spec.id, spec.spec_hash()))

    def reservation_of(self, spec: ModelSpec, gpu_total_mb: int | None) -> Reservation:
        declared = spec.resource_requirements.gpu_memory_mb
        if declared is not None:
            return reservation(declared, None)
        figures = self._learned(spec.id, spec.spec_hash()) if self._learned else None
        if figures is None or figures.peak_mb is None:
            figures = MemoryFigures(estimated_mb=self.estimate_of(spec, gpu_total_mb))
        return reservation(None, figures)

    def of(self, spec: ModelSpec, gpu_total_mb: int | None) -> int | None:
        if spec.resource_requirements.gpu_memory_mb is not None:
            return spec.resource_requirements.gpu_memory_mb
        return self.reservation_of(spec, gpu_total_mb).mb

    def all(self, desired: DesiredState, gpus: Sequence[GPUInfo]) -> dict[str, int | None]:
        gpu_total = min((g.memory_total for g in gpus), default=None)
        return {mid: self.of(spec, gpu_total) for mid, spec in desired.models.items()}

    def reasons(self, desired: DesiredState, gpus: Sequence[GPUInfo]) -> dict[str, Reservation]:
        """Which figure each model is planned with, and why (for `reconciler plan`)."""
        gpu_total = min((g.memory_total for g in gpus), default=None)
        return {mid: self.reservation_of(s, gpu_total) for mid, s in desired.models.items()}


def _estimate(spec: ModelSpec, gpu_total_mb: int | None) -> int | None:
    return estimate_spec(spec, gpu_total_mb).per_gpu_mb  # unreadable files: unknown


def plan_desired(
    desired: DesiredState,
    observed: Mapping[str, ObservedModel],
    problems: Sequence[Problem] = (),
    *,
    managed_pids: Collection[int] = (),
    requirements: Requirements | None = None,
) -> Plan:
    """Plan `desired` against `observed` on this host's GPUs (InventoryError when unknown);
    each replica of a spec is an instance of its own (reconciler.core.replicas)."""
    desired = expand(desired)
    gpus = inventory(desired.cluster, managed_pids)
    memory = (requirements or Requirements()).all(desired, gpus)
    # offline nobody asks: an on-demand model is not started, a running one stays
    running = {m for m, o in observed.items() if o.occupies}
    decision = decide(desired.models, {}, running, {}, None)
    plan = make_plan(planned(desired, decision.keep), observed, gpus, memory, problems)
    return annotate(plan, desired.models, decision, running)

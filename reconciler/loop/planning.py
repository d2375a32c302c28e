"""The pass's planning: gather what the pure planner needs from this host, and make one plan.

- `Requirements`: MiB per GPU of each model (the spec's number, the measured peak, or the
  estimate from its files).
- On-demand wishes: the gateway knows who asks for what; the loop must not import it, so the
  daemon's face injects a callable (`Planning.traffic`) that returns what the gateway saw. Without
  one (`--no-gateway`, a one-shot `apply`, `reconciler plan`) nobody asks: an on-demand model is
  not started, and one that runs is kept until its idle timeout passes (counted from when this
  process first saw it). The rules are pure: reconciler.core.activation.
- Isolation: one model's problem is that model's. Validation should refuse what an engine cannot
  use, but the loop does not bet on it: a spec whose hash, record, memory estimate or plan raises
  (a number of thousands of digits, a value the estimate overflows on, a bug) is set aside with
  the reason, and the others are planned without it. The pass then records the set-aside model as
  `error` (an error event) and stops its engine, if one runs.

A pass makes one plan (reconciler.core.activation.plan_pass); only when planning raises does it
plan again, once per model to find the culprit and once without it, after logging the traceback.
Shared by `reconciler plan` (offline, against an observed-state file) and the reconcile pass.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace

from reconciler.core.activation import MakePlan, Traffic, Wishes, is_on_demand, plan_pass
from reconciler.core.desired import DesiredState, Problem
from reconciler.core.estimate import MemoryFigures, Reservation, reservation
from reconciler.core.instance import InstanceRecord
from reconciler.core.plan import Plan, make_plan
from reconciler.core.schedule.values import GPUInfo
from reconciler.core.serving import expand
from reconciler.core.spec import ModelSpec
from reconciler.engines.registry import estimate_spec
from reconciler.gpus import inventory
from reconciler.loop.supervision import describe

log = logging.getLogger("reconciler.loop.planning")

LearnedLookup = Callable[[str, str], MemoryFigures | None]
"""(model id, spec hash) -> what was measured of it on this host, if anything."""

TrafficSource = Callable[[], Mapping[str, Traffic]]
"""() -> model id -> what the gateway saw of its requests (read once per pass)."""


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
    observed: Mapping[str, InstanceRecord],
    problems: Sequence[Problem] = (),
    *,
    managed_pids: Collection[int] = (),
    requirements: Requirements | None = None,
) -> Plan:
    """Plan `desired` against `observed` on this host's GPUs (InventoryError when unknown);
    each replica of a spec is an instance of its own (reconciler.core.serving). Offline nobody
    asks: an on-demand model is not started, a running one stays."""
    desired = expand(desired)
    gpus = inventory(desired.cluster, managed_pids)
    memory = (requirements or Requirements()).all(desired, gpus)
    return plan_pass(desired, observed, gpus, memory, problems)


class Planning:
    """The pass's one plan, with on-demand wishes and broken specs set aside."""

    def __init__(
        self, requirements: Callable[[], Requirements], make: MakePlan = make_plan
    ) -> None:
        self._requirements = requirements
        """read at every pass: the owner may replace its Requirements"""
        self._make = make
        self.traffic: TrafficSource | None = None
        """set by whoever runs a gateway beside the loop (reconciler.gateway.service)"""
        self.running_since: dict[str, float] = {}
        """when this process first saw each on-demand model running (its idle clock until a
        request reaches it)"""

    def plan(
        self,
        desired: DesiredState,
        observed: Mapping[str, InstanceRecord],
        problems: Sequence[Problem],
        pids: Collection[int],
        now: float,
    ) -> tuple[Plan, dict[str, str]]:
        """The plan, and the models set aside (id -> why) because their memory estimate or
        plan raises. InventoryError (the host's GPUs are unknown) is everyone's problem and
        propagates."""
        gpus = inventory(desired.cluster, pids)
        memory, broken = self._memory(desired, gpus)
        wishes = self._wishes(desired, observed, now)
        usable = without(desired, broken)
        try:
            plan = plan_pass(
                usable, _unseen(observed, broken), gpus, memory, problems, wishes, self._make
            )
            return plan, broken
        except Exception:
            log.exception("planning failed; looking for the model that makes it fail")
        culprits = self._culprits(usable, observed, gpus, memory)
        if not culprits:
            raise RuntimeError("planning fails, and no single model makes it fail")
        broken.update(culprits)
        usable = without(usable, culprits)
        seen = _unseen(observed, broken)
        return plan_pass(usable, seen, gpus, memory, problems, wishes, self._make), broken

    def _memory(
        self, desired: DesiredState, gpus: Sequence[GPUInfo]
    ) -> tuple[dict[str, int | None], dict[str, str]]:
        """MiB per GPU of each model, and the models whose estimate raises (id -> why)."""
        requirements = self._requirements()
        gpu_total = min((g.memory_total for g in gpus), default=None)
        memory: dict[str, int | None] = {}
        broken: dict[str, str] = {}
        for model_id, spec in desired.models.items():
            try:
                memory[model_id] = requirements.of(spec, gpu_total)
            except Exception as exc:
                broken[model_id] = f"its memory cannot be estimated: {describe(exc)}"
        return memory, broken

    def _wishes(
        self, desired: DesiredState, observed: Mapping[str, InstanceRecord], now: float
    ) -> Wishes:
        if not any(is_on_demand(s) for s in desired.models.values()):
            return Wishes()
        running = occupying(observed)
        self.running_since = {m: self.running_since.get(m, now) for m in running}
        return Wishes(self._read(), dict(self.running_since), now)

    def _read(self) -> Mapping[str, Traffic]:
        if self.traffic is None:
            return {}
        try:
            return self.traffic()
        except Exception:  # the gateway's trouble must not stop the loop: nobody asked
            log.exception("reading the gateway's traffic failed")
            return {}

    def _culprits(
        self,
        desired: DesiredState,
        observed: Mapping[str, InstanceRecord],
        gpus: Sequence[GPUInfo],
        memory: Mapping[str, int | None],
    ) -> dict[str, str]:
        """The models that make a plan fail on their own."""
        found = {}
        for model_id in sorted(desired.models):
            alone = without(desired, set(desired.models) - {model_id})
            try:
                seen = {k: v for k, v in observed.items() if k == model_id}
                self._make(alone, seen, gpus, memory, ())
            except Exception as exc:
                found[model_id] = f"it cannot be planned: {describe(exc)}"
        return found


def occupying(observed: Mapping[str, InstanceRecord]) -> frozenset[str]:
    """Models (instances) with an engine that holds its GPUs (starting or running)."""
    return frozenset(m for m, o in observed.items() if o.occupies)


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


def _unseen(
    observed: Mapping[str, InstanceRecord], removed: Collection[str]
) -> dict[str, InstanceRecord]:
    """What the planner may see: a set-aside model's engine is the pass's to stop, not the
    planner's (a planned stop would record it as stopped, hiding its error)."""
    return {k: v for k, v in observed.items() if k not in removed}

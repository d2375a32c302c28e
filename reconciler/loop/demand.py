"""The pass's side of on-demand activation: read the traffic, decide, plan, annotate.

The gateway knows who asks for what; the loop must not import it, so the daemon's face injects a
callable (`OnDemand.traffic`) that returns what the gateway saw. Without one (`--no-gateway`, a
one-shot `apply`, `reconciler plan`) nobody asks: an on-demand model is not started, and one that
runs is kept until its idle timeout passes (counted from when this process first saw it).
The rules themselves are pure: reconciler.core.activation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence

from reconciler.core.activation import (
    Decision,
    Fit,
    Traffic,
    annotate,
    decide,
    idle_to_stop,
    is_on_demand,
    planned,
)
from reconciler.core.desired import DesiredState
from reconciler.core.observed import ObservedModel, Status
from reconciler.core.plan import Plan, make_plan
from reconciler.core.problems import Problem
from reconciler.core.replicas import model_of
from reconciler.gpus import inventory
from reconciler.loop.isolation import plan_isolated, without
from reconciler.loop.planning import Requirements

log = logging.getLogger("reconciler.loop.demand")

TrafficSource = Callable[[], Mapping[str, Traffic]]
"""() -> model id -> what the gateway saw of its requests (read once per pass)."""


class OnDemand:
    def __init__(self, requirements: Callable[[], Requirements]) -> None:
        self._requirements = requirements
        """read at every pass: the owner may replace its Requirements"""
        self.traffic: TrafficSource | None = None
        """set by whoever runs a gateway beside the loop (reconciler.gateway.attach)"""
        self.running_since: dict[str, float] = {}
        """when this process first saw each on-demand model running (its idle clock until a
        request reaches it)"""

    def plan(
        self,
        desired: DesiredState,
        observed: Mapping[str, ObservedModel],
        problems: Sequence[Problem],
        pids: Collection[int],
        now: float,
    ) -> tuple[Plan, dict[str, str]]:
        """reconciler.loop.isolation.plan_isolated with on-demand activation applied."""

        def plan_for(keep: Collection[str]) -> tuple[Plan, dict[str, str]]:
            return plan_isolated(
                planned(desired, keep),
                observed,
                problems,
                managed_pids=pids,
                requirements=self._requirements(),
            )

        if not any(is_on_demand(s) for s in desired.models.values()):
            return plan_for(())
        running = occupying(observed)
        self.running_since = {m: self.running_since.get(m, now) for m in running}
        # the gateway counts requests per model; each instance of a model shares them
        seen = self._read()
        traffic = {m: seen[model_of(m)] for m in desired.models if model_of(m) in seen}
        decision = decide(desired.models, traffic, running, self.running_since, now)
        plan, broken = plan_for(decision.keep)
        dropped: frozenset[str] = frozenset()
        waiting: set[str] = set()
        if decision.newcomers:
            fit = self._fitter(desired, observed, pids, decision, broken)
            dropped = idle_to_stop(decision.idle, fit)
            if dropped:
                plan, broken = plan_for(decision.keep - dropped)
            unplaced = {u.model for u in plan.unschedulable} & decision.newcomers
            others = {m for m in running if is_on_demand(desired.models[m])} if unplaced else set()
            # a wanted model that fits once the on-demand engines in use go idle waits its turn
            # in the gateway's queue; one that would not fit even then is unschedulable
            if unplaced and fit(frozenset(others)) is not Fit.unplaced:
                waiting = unplaced
        return annotate(plan, desired.models, decision, running, dropped, waiting), broken

    def _read(self) -> Mapping[str, Traffic]:
        if self.traffic is None:
            return {}
        try:
            return self.traffic()
        except Exception:  # the gateway's trouble must not stop the loop: nobody asked
            log.exception("reading the gateway's traffic failed")
            return {}

    def _fitter(
        self,
        desired: DesiredState,
        observed: Mapping[str, ObservedModel],
        pids: Collection[int],
        decision: Decision,
        broken: Collection[str],
    ) -> Callable[[frozenset[str]], Fit]:
        """fit(removed): what a plan without `removed` does for the wanted newcomers."""
        usable = without(desired, broken)
        gpus = inventory(usable.cluster, pids)
        memory = self._requirements().all(usable, gpus)
        seen = {k: v for k, v in observed.items() if k not in broken}
        newcomers = decision.newcomers - set(broken)

        def fit(removed: frozenset[str]) -> Fit:
            keep = decision.keep - removed
            try:
                plan = make_plan(planned(usable, keep), seen, gpus, memory)
            except Exception:
                return Fit.unplaced
            placed = {m for m, o in plan.models.items() if o.status is Status.running}
            if not newcomers <= placed:
                return Fit.unplaced
            preempted = any(
                o.status is Status.preempted and m in seen and seen[m].occupies
                for m, o in plan.models.items()
            )
            return Fit.preempting if preempted else Fit.free

        return fit


def occupying(observed: Mapping[str, ObservedModel]) -> frozenset[str]:
    """Models (instances) with an engine that holds its GPUs (starting or running)."""
    return frozenset(m for m, o in observed.items() if o.occupies)

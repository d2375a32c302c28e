"""On-demand activation: which on-demand models the planner is asked to run this pass.

`activation: on_demand` models are started by their requests through the gateway, not by the
desired state alone. Each pass the loop reads the gateway's traffic (queued and in-flight
requests, the time of the last request per model) and decides here, without I/O:

- wanted (a request waits or is in flight): planned with its priority like any model;
- running and not wanted: kept until `idle_timeout_s` has passed since its last request (null:
  kept until its room is needed); no engine with a request in flight is ever idle;
- neither: not planned (the planner sees it as disabled, so it still runs as a fallback).

Room for a wanted model that does not run comes first from idle on-demand engines, least
recently used first (`idle_to_stop`); only when stopping every idle one is not enough do the
planner's usual rules preempt strictly lower priorities.

`plan_pass` is the pass's one plan: it decides, searches for room with the scheduler alone, and
makes the plan once (`make`, make_plan unless a caller counts or wraps it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from reconciler.core.desired import DesiredState, Problem
from reconciler.core.instance import InstanceRecord
from reconciler.core.plan import Plan, make_plan
from reconciler.core.plan.make import local_observed, local_part, scheduled, with_remote
from reconciler.core.schedule.values import GPUInfo
from reconciler.core.serving import model_of
from reconciler.core.spec import ModelSpec

ON_DEMAND = "on_demand"


@dataclass(frozen=True)
class Traffic:
    """What the gateway saw of one model's requests."""

    queued: int = 0
    inflight: int = 0
    last_request_at: float | None = None
    """wall-clock time a request for it last arrived or ended (None: none since the gateway
    started)"""

    @property
    def wanted(self) -> bool:
        return self.queued > 0 or self.inflight > 0


class Fit(Enum):
    """What a plan does for the wanted models that do not run yet."""

    unplaced = 0
    """at least one of them is not placed"""
    preempting = 1
    """all placed, by preempting an engine that runs"""
    free = 2
    """all placed, nobody preempted"""


@dataclass(frozen=True)
class Decision:
    keep: frozenset[str]
    """on-demand models the planner is asked to run"""
    newcomers: frozenset[str]
    """wanted and not running: they need room"""
    idle: Mapping[str, float] = field(default_factory=dict)
    """running on-demand models nobody is using now -> when they were last used"""
    expired: Mapping[str, float] = field(default_factory=dict)
    """running on-demand models whose idle timeout passed -> seconds idle"""


def is_on_demand(spec: ModelSpec) -> bool:
    return spec.activation == ON_DEMAND


def decide(
    specs: Mapping[str, ModelSpec],
    traffic: Mapping[str, Traffic],
    running: Collection[str],
    running_since: Mapping[str, float],
    now: float | None,
) -> Decision:
    """Which on-demand models (or replicas' instances) to plan. `running`: those with an
    engine that occupies its GPUs; `running_since`: when the loop first saw each running (the
    idle clock of an engine that no request reached, e.g. one adopted after a restart); `now`
    None: no clock (an offline plan), so no idle timeout expires."""
    keep: set[str] = set()
    newcomers: set[str] = set()
    idle: dict[str, float] = {}
    expired: dict[str, float] = {}
    for model_id, spec in specs.items():
        if not is_on_demand(spec):
            continue
        seen = traffic.get(model_of(model_id), Traffic())  # replicas share their model's
        if seen.wanted:
            keep.add(model_id)
            if model_id not in running:
                newcomers.add(model_id)
            continue
        if model_id not in running:
            continue
        last_used = _first_known(seen.last_request_at, running_since.get(model_id), now, 0.0)
        idle_s = (now - last_used) if now is not None else 0.0
        if spec.idle_timeout_s is not None and now is not None and idle_s >= spec.idle_timeout_s:
            expired[model_id] = idle_s
            continue
        keep.add(model_id)
        idle[model_id] = last_used
    return Decision(frozenset(keep), frozenset(newcomers), idle, expired)


def idle_to_stop(idle: Mapping[str, float], fit: Callable[[frozenset[str]], Fit]) -> frozenset[str]:
    """The idle engines to stop so that the wanted models can start: the shortest least-recently-
    used-first prefix after whose stop they are placed without preempting anyone (none when
    they fit already); when no prefix does that, every idle engine (the planner then preempts
    strictly lower priorities for the rest); when even that does not place them, none (stopping
    would gain nothing). `fit(removed)` plans without `removed` and says what the plan does."""
    order = sorted(idle, key=lambda m: (idle[m], m))
    for count in range(len(order) + 1):
        removed = frozenset(order[:count])
        if fit(removed) is Fit.free:
            return removed
    everything = frozenset(order)
    return everything if everything and fit(everything) is Fit.preempting else frozenset()


def planned(desired: DesiredState, keep: Collection[str]) -> DesiredState:
    """`desired` as the planner sees it: on-demand models outside `keep` disabled (a disabled
    model runs only as another's fallback)."""
    models = {
        model_id: spec.model_copy(update={"enabled": False})
        if is_on_demand(spec) and spec.enabled and model_id not in keep
        else spec
        for model_id, spec in desired.models.items()
    }
    return replace(desired, models=models)


def demand_state(model_id: str, decision: Decision, running: Collection[str]) -> str:
    """idle / wanted / running, as `reconciler plan`, the API and the dashboard show it."""
    if model_id in decision.newcomers:
        return "wanted"
    if model_id in running and model_id not in decision.expired:
        return "running"
    return "idle"


def annotate(
    plan: Plan,
    specs: Mapping[str, ModelSpec],
    decision: Decision,
    running: Collection[str],
    dropped: Collection[str] = (),
    waiting: Collection[str] = (),
) -> Plan:
    """`plan` with what on-demand activation decided written on it: each on-demand model's
    demand state and reason, the reason of each idle stop, and the wanted models that wait for
    room left out of the unschedulable list (their requests wait in the gateway's queue)."""
    reasons: dict[str, str] = {}
    states: dict[str, str] = {}
    for model_id, spec in sorted(specs.items()):
        if not is_on_demand(spec):
            continue
        states[model_id] = demand_state(model_id, decision, running)
        reasons[model_id] = _reason(model_id, spec, decision, running, dropped, waiting)
    idled = set(dropped) | set(decision.expired)
    actions = tuple(
        replace(a, reason=f"on demand: {reasons[a.model]}")
        if (a.action == "stop" and a.model in idled)
        or (a.action == "start" and a.model in decision.newcomers)
        else a
        for a in plan.actions
    )
    models = {
        mid: replace(o, reason=o.reason if o.fallback_for else reasons[mid], demand=states[mid])
        if mid in states
        else o
        for mid, o in plan.models.items()
    }
    unschedulable = tuple(u for u in plan.unschedulable if u.model not in waiting)
    return replace(plan, actions=actions, models=models, unschedulable=unschedulable)


def _reason(
    model_id: str,
    spec: ModelSpec,
    decision: Decision,
    running: Collection[str],
    dropped: Collection[str],
    waiting: Collection[str],
) -> str:
    if model_id in decision.expired:
        idle_s = decision.expired[model_id]
        return f"idle for {idle_s:.0f} s (idle_timeout_s {spec.idle_timeout_s:g})"
    if model_id in dropped:
        wanted = ", ".join(sorted(decision.newcomers))
        return f"idle, least recently used; makes room for {wanted}"
    if model_id in waiting:
        in_use = (m for m in running if m in decision.keep and m not in decision.idle)
        return f"waits for {', '.join(sorted(in_use)) or 'room'} to go idle"
    if model_id in decision.newcomers:
        return "a request waits for it"
    if model_id in running:
        timeout = spec.idle_timeout_s
        return f"stops after {timeout:g} s idle" if timeout is not None else "kept until evicted"
    return "starts on its first request through the gateway"


MakePlan = Callable[
    [
        DesiredState,
        Mapping[str, InstanceRecord],
        Sequence[GPUInfo],
        Mapping[str, int | None],
        Iterable[Problem],
    ],
    Plan,
]
"""make_plan's signature: (desired, observed, gpus, memory per model, problems) -> Plan."""


@dataclass(frozen=True)
class Wishes:
    """What the gateway asks of the pass. The default: nobody asks and there is no clock (an
    offline plan, or a loop without a gateway)."""

    traffic: Mapping[str, Traffic] = field(default_factory=dict)
    """model id (not instance) -> what the gateway saw of its requests"""
    running_since: Mapping[str, float] = field(default_factory=dict)
    """when the loop first saw each running on-demand instance"""
    now: float | None = None


def plan_pass(
    desired: DesiredState,
    observed: Mapping[str, InstanceRecord],
    gpus: Sequence[GPUInfo],
    memory: Mapping[str, int | None],
    problems: Iterable[Problem] = (),
    wishes: Wishes = Wishes(),
    make: MakePlan = make_plan,
) -> Plan:
    """The plan of a pass with on-demand activation applied, made once. When a wanted model
    does not run yet, the room search (which idle engines to stop, whether it waits or is
    unschedulable) asks the scheduler alone; an exception anywhere propagates to the caller.
    Remote models are listed on the plan, never scheduled (reconciler.core.plan.make)."""
    specs = desired.models
    split = local_part(desired, observed)
    desired, observed = split.local, local_observed(observed, split.remote)
    running = frozenset(m for m, o in observed.items() if o.occupies)
    decision = decide(desired.models, wishes.traffic, running, wishes.running_since, wishes.now)
    dropped: frozenset[str] = frozenset()
    waiting: frozenset[str] = frozenset()

    def fit(removed: frozenset[str]) -> Fit:
        placing = planned(desired, decision.keep - removed)
        result = scheduled(placing, observed, gpus, memory).result
        if not decision.newcomers <= result.placements.keys():
            return Fit.unplaced
        preempted = any(
            m not in result.placements and m in observed and observed[m].occupies
            for m in result.preempted
        )
        return Fit.preempting if preempted else Fit.free

    if decision.newcomers:
        dropped = idle_to_stop(decision.idle, fit)
    plan = make(planned(desired, decision.keep - dropped), observed, gpus, memory, problems)
    unplaced = {u.model for u in plan.unschedulable} & decision.newcomers
    # a wanted model that fits once the on-demand engines in use go idle waits its turn in the
    # gateway's queue; one that would not fit even then is unschedulable
    if unplaced and fit(running & decision.keep) is not Fit.unplaced:
        waiting = frozenset(unplaced)
    plan = annotate(plan, desired.models, decision, running, dropped, waiting)
    return with_remote(plan, split, specs)


def _first_known(*values: float | None) -> float:
    return next(v for v in values if v is not None)

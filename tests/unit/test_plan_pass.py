"""One plan per pass (reconciler.core.activation.plan_pass): on-demand activation decides, searches
for room with the scheduler alone, and makes the plan once; the plan is the one the loop made
before, when it planned 2 + k times a pass (the oracle below is that way, written out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from plan_counting import Counting

from reconciler.core.activation import (
    Fit,
    Traffic,
    Wishes,
    annotate,
    decide,
    idle_to_stop,
    is_on_demand,
    plan_pass,
    planned,
)
from reconciler.core.cluster import ClusterSpec, DeclaredGPU
from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan import Plan
from reconciler.core.schedule.values import GPUInfo
from reconciler.core.spec import ModelSpec
from reconciler.gpus import declared

NOW = 1_000.0


def two_plans_and_more(
    desired: DesiredState,
    observed: Mapping[str, InstanceRecord],
    gpus: Sequence[GPUInfo],
    memory: Mapping[str, int | None],
    wishes: Wishes,
) -> tuple[Plan, int]:
    """The oracle: the loop's planning before one plan per pass, a full plan for every candidate
    (the plan, one per LRU prefix tried, one more after stopping idle engines, one to tell a
    waiting model from an unschedulable one); and how many plans it made."""
    made = Counting()
    running = frozenset(m for m, o in observed.items() if o.occupies)
    decision = decide(desired.models, wishes.traffic, running, wishes.running_since, wishes.now)

    def plan_for(keep: frozenset[str]) -> Plan:
        return made(planned(desired, keep), observed, gpus, memory)

    def fit(removed: frozenset[str]) -> Fit:
        plan = plan_for(decision.keep - removed)
        placed = {m for m, o in plan.models.items() if o.status is Status.running}
        if not decision.newcomers <= placed:
            return Fit.unplaced
        preempted = any(
            o.status is Status.preempted and m in observed and observed[m].occupies
            for m, o in plan.models.items()
        )
        return Fit.preempting if preempted else Fit.free

    plan = plan_for(decision.keep)
    dropped: frozenset[str] = frozenset()
    waiting: set[str] = set()
    if decision.newcomers:
        dropped = idle_to_stop(decision.idle, fit)
        if dropped:
            plan = plan_for(decision.keep - dropped)
        unplaced = {u.model for u in plan.unschedulable} & decision.newcomers
        others = {m for m in running if is_on_demand(desired.models[m])}
        if unplaced and fit(frozenset(others)) is not Fit.unplaced:
            waiting = unplaced
    return annotate(plan, desired.models, decision, running, dropped, waiting), made.calls


def spec(mid: str, priority: int, memory: int, on_demand: bool) -> ModelSpec:
    return ModelSpec(
        id=mid,
        framework="vllm",
        model_path=f"org/{mid}",
        priority=priority,
        resource_requirements={"gpu_count": 1, "gpu_memory_mb": memory},
        activation="on_demand" if on_demand else "always",
    )


def host(*specs: ModelSpec, gpus: int = 1) -> DesiredState:
    cluster = ClusterSpec(gpus=[DeclaredGPU(index=i, memory_mb=2000) for i in range(gpus)])
    return DesiredState({s.id: s for s in specs}, cluster, "abc")


def engine(mid: str, memory: int, gpu: int, port: int) -> InstanceRecord:
    return InstanceRecord(
        id=mid, status=Status.running, gpus=(gpu,), memory_mb=memory, port=port, spec_hash=None
    )


def memory_of(desired: DesiredState) -> dict[str, int | None]:
    return {m: s.resource_requirements.gpu_memory_mb for m, s in desired.models.items()}


def test_a_request_for_a_cold_model_on_a_full_gpu_is_one_plan() -> None:
    """alpha runs idle and fills the GPU; a request waits for beta, of the same priority: the
    idle engine makes room (stop alpha, start beta), decided with one plan (it took four)."""
    desired = host(spec("alpha", 5, 1500, True), spec("beta", 5, 1500, True))
    observed = {"alpha": engine("alpha", 1500, 0, 8100)}
    wishes = Wishes(
        {"alpha": Traffic(last_request_at=NOW - 60), "beta": Traffic(queued=1)}, {}, NOW
    )
    made = Counting()
    gpus = declared(desired.cluster)
    plan = plan_pass(desired, observed, gpus, memory_of(desired), (), wishes, made)
    assert made.calls == 1
    assert [(a.action, a.model) for a in plan.actions] == [("stop", "alpha"), ("start", "beta")]
    assert plan.actions[0].reason.startswith("on demand: idle, least recently used")
    assert plan.models["beta"].demand == "wanted"
    oracle, before = two_plans_and_more(desired, observed, gpus, memory_of(desired), wishes)
    assert plan == oracle and before == 4


def test_offline_nobody_asks_and_one_plan_is_made() -> None:
    desired = host(spec("lazy", 5, 500, True), spec("always", 5, 500, False))
    made = Counting()
    plan = plan_pass(desired, {}, declared(desired.cluster), memory_of(desired), (), make=made)
    assert made.calls == 1
    assert [(a.action, a.model) for a in plan.actions] == [("start", "always")]
    assert plan.models["lazy"].demand == "idle"


@st.composite
def scenes(draw: st.DrawFn) -> tuple[DesiredState, dict[str, InstanceRecord], Wishes]:
    """A few models on one or two 2000 MiB GPUs, some running, some asked for."""
    ids = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=5, unique=True))
    specs = [
        spec(
            mid,
            draw(st.integers(1, 9)),
            draw(st.sampled_from([500, 1000, 1500])),
            draw(st.booleans()),
        )
        for mid in ids
    ]
    gpus = draw(st.integers(1, 2))
    desired = host(*specs, gpus=gpus)
    free = [2000] * gpus
    observed: dict[str, InstanceRecord] = {}
    for port, s in enumerate(specs, start=8100):
        memory = s.resource_requirements.gpu_memory_mb or 0
        gpu = draw(st.integers(0, gpus - 1))
        if draw(st.booleans()) and free[gpu] >= memory:  # only what could really run
            free[gpu] -= memory
            observed[s.id] = engine(s.id, memory, gpu, port)
    traffic = {
        mid: Traffic(
            queued=draw(st.integers(0, 1)),
            inflight=draw(st.integers(0, 1)),
            last_request_at=draw(st.none() | st.floats(NOW - 100, NOW)),
        )
        for mid in ids
        if draw(st.booleans())
    }
    since = {m: draw(st.floats(NOW - 100, NOW)) for m in observed}
    return desired, observed, Wishes(traffic, since, NOW)


@settings(max_examples=300, deadline=None)
@given(scenes())
def test_one_plan_is_the_plan_that_many_plans_made(
    scene: tuple[DesiredState, dict[str, InstanceRecord], Wishes],
) -> None:
    desired, observed, wishes = scene
    gpus, memory = declared(desired.cluster), memory_of(desired)
    made = Counting()
    plan = plan_pass(desired, observed, gpus, memory, (), wishes, made)
    oracle, _ = two_plans_and_more(desired, observed, gpus, memory, wishes)
    assert made.calls == 1
    assert plan == oracle

"""On-demand activation: who is planned, which idle engines make room (LRU first), what the
plan says about each on-demand model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from test_validate import error, one, path_of

from reconciler.core.activation import (
    Decision,
    Fit,
    Traffic,
    annotate,
    decide,
    idle_to_stop,
    planned,
)
from reconciler.core.cluster import ClusterSpec, DeclaredGPU
from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan import make_plan, render_json, render_markdown, render_text
from reconciler.core.serving import instances
from reconciler.core.spec import ModelSpec
from reconciler.gpus import declared


def spec(mid: str, priority: int = 5, memory: int = 1500, **fields) -> ModelSpec:
    return ModelSpec(
        id=mid,
        framework="vllm",
        model_path=f"org/{mid}",
        priority=priority,
        resource_requirements={"gpu_count": 1, "gpu_memory_mb": memory},
        **fields,
    )


def lazy(mid: str, **fields) -> ModelSpec:
    return spec(mid, activation="on_demand", **fields)


def desired_of(*specs: ModelSpec, gpu_mb: int = 2000) -> DesiredState:
    cluster = ClusterSpec(gpus=[DeclaredGPU(index=0, memory_mb=gpu_mb)])
    return DesiredState({s.id: s for s in specs}, cluster, "abc")


def running(mid: str, memory: int = 1500, port: int = 8100) -> InstanceRecord:
    return InstanceRecord(mid, Status.running, gpus=(0,), memory_mb=memory, port=port)


def plan_with(desired: DesiredState, observed: list[InstanceRecord], keep):
    memory = {m: s.resource_requirements.gpu_memory_mb for m, s in desired.models.items()}
    seen = {o.id: o for o in observed}
    return make_plan(planned(desired, keep), seen, declared(desired.cluster), memory)


# -- decide --------------------------------------------------------------------------------


def test_an_on_demand_model_nobody_asked_for_is_not_planned() -> None:
    specs = {"a": lazy("a"), "b": spec("b")}
    decision = decide(specs, {}, running=set(), running_since={}, now=100.0)
    assert decision.keep == frozenset()
    assert decision.newcomers == frozenset()
    desired = desired_of(*specs.values())
    plan = plan_with(desired, [], decision.keep)
    assert [(a.action, a.model) for a in plan.actions] == [("start", "b")]


def test_a_waiting_request_makes_it_wanted() -> None:
    specs = {"a": lazy("a")}
    decision = decide(specs, {"a": Traffic(queued=1)}, set(), {}, now=100.0)
    assert decision.keep == decision.newcomers == frozenset({"a"})


def test_idle_timeout_counts_from_the_last_request_and_never_with_one_in_flight() -> None:
    specs = {"a": lazy("a", idle_timeout_s=5), "b": lazy("b", idle_timeout_s=5)}
    traffic = {
        "a": Traffic(last_request_at=90.0),
        "b": Traffic(inflight=1, last_request_at=10.0),
    }
    decision = decide(specs, traffic, {"a", "b"}, {}, now=100.0)
    assert decision.expired == {"a": 10.0}
    assert decision.keep == frozenset({"b"})
    assert decide(specs, traffic, {"a", "b"}, {}, now=94.0).expired == {}


def test_without_a_request_the_idle_clock_starts_when_the_loop_first_saw_it() -> None:
    specs = {"a": lazy("a", idle_timeout_s=5)}
    assert decide(specs, {}, {"a"}, {"a": 98.0}, now=100.0).keep == frozenset({"a"})
    assert decide(specs, {}, {"a"}, {"a": 90.0}, now=100.0).expired == {"a": 10.0}


def test_an_engine_in_use_is_not_stopped_idle_timeout_s_after_it_started() -> None:
    specs = {"a": lazy("a", idle_timeout_s=5)}
    started = {"a": 0.0}  # the loop first saw it running at 0; requests came ever since
    used = {"a": Traffic(last_request_at=97.0)}
    decision = decide(specs, used, {"a"}, started, now=100.0)
    assert decision.keep == frozenset({"a"}) and decision.expired == {}
    assert decision.idle == {"a": 97.0}  # its last use, not its start, orders the LRU
    assert decide(specs, used, {"a"}, started, now=102.5).expired == {"a": 5.5}


def test_replicas_are_as_busy_as_their_model() -> None:
    """The gateway counts requests per model; every instance of a replicated model shares them:
    an instance no request reached by name is not idle while its model is in use."""
    model = lazy("m", idle_timeout_s=5, replicas=3)
    specs = {s.id: s for s in instances(model)}
    assert sorted(specs) == ["m", "m.1", "m.2"]
    busy = decide(specs, {"m": Traffic(inflight=1)}, {"m"}, {"m": 0.0}, now=100.0)
    assert busy.keep == frozenset(specs) and busy.expired == {}
    assert busy.newcomers == frozenset({"m.1", "m.2"})  # wanted: the others start too
    recent = decide(specs, {"m": Traffic(last_request_at=98.0)}, set(specs), {}, now=100.0)
    assert recent.keep == frozenset(specs) and recent.expired == {}
    assert recent.idle == dict.fromkeys(specs, 98.0)
    quiet = decide(specs, {"m": Traffic(last_request_at=90.0)}, set(specs), {}, now=100.0)
    assert quiet.keep == frozenset() and quiet.expired == dict.fromkeys(specs, 10.0)


def test_a_null_timeout_or_an_offline_plan_keeps_a_running_engine() -> None:
    specs = {"a": lazy("a"), "b": lazy("b", idle_timeout_s=1)}
    assert decide(specs, {}, {"a"}, {"a": 0.0}, now=1e9).keep == frozenset({"a"})
    assert decide(specs, {}, {"a", "b"}, {}, now=None).keep == frozenset({"a", "b"})


@given(
    st.dictionaries(
        st.sampled_from("abcdef"),
        st.tuples(
            st.booleans(),  # on demand
            st.none() | st.floats(1, 100),  # idle timeout
            st.integers(0, 2),  # queued
            st.integers(0, 2),  # in flight
            st.none() | st.floats(0, 200),  # last request
            st.booleans(),  # running
        ),
    ),
    st.floats(0, 300),
)
def test_decide_properties(models, now: float) -> None:
    specs = {
        m: lazy(m, idle_timeout_s=t) if od else spec(m) for m, (od, t, *_rest) in models.items()
    }
    traffic = {m: Traffic(q, i, last) for m, (_, _, q, i, last, _) in models.items()}
    run = {m for m, v in models.items() if v[5]}
    decision = decide(specs, traffic, run, {}, now)
    for m, (od, timeout, q, i, last, is_running) in models.items():
        if not od:
            assert m not in decision.keep | set(decision.expired)
            continue
        if q or i:  # a request waits or is in flight: wanted, never idle
            assert m in decision.keep and m not in decision.expired and m not in decision.idle
            assert (m in decision.newcomers) == (not is_running)
        elif not is_running:
            assert m not in decision.keep
        elif m in decision.expired:
            assert timeout is not None and now - (now if last is None else last) >= timeout
        else:
            assert m in decision.keep and m in decision.idle


# -- idle_to_stop --------------------------------------------------------------------------


@given(
    st.dictionaries(st.sampled_from("abcdefg"), st.tuples(st.floats(0, 50), st.integers(1, 9))),
    st.integers(0, 20),
    st.integers(0, 40),
    st.integers(0, 20),
)
def test_idle_engines_go_least_recently_used_first_and_only_as_many_as_needed(
    idle_engines, free: int, need: int, preemptible: int
) -> None:
    """A model GPU: `free` units free, idle engine m holds size[m] units; the newcomer needs
    `need`; lower priorities could free `preemptible` more."""
    last_used = {m: t for m, (t, _) in idle_engines.items()}
    size = {m: s for m, (_, s) in idle_engines.items()}

    def fit(removed: frozenset[str]) -> Fit:
        room = free + sum(size[m] for m in removed)
        if room >= need:
            return Fit.free
        return Fit.preempting if room + preemptible >= need else Fit.unplaced

    chosen = idle_to_stop(last_used, fit)
    order = sorted(last_used, key=lambda m: (last_used[m], m))
    assert chosen <= set(last_used)
    assert chosen == set(order[: len(chosen)])  # an LRU prefix
    prefixes = [frozenset(order[:k]) for k in range(len(order) + 1)]
    free_prefixes = [p for p in prefixes if fit(p) is Fit.free]
    if free_prefixes:
        assert chosen == min(free_prefixes, key=len)  # no idle engine stopped in vain
    elif fit(frozenset(order)) is Fit.preempting:
        assert chosen == frozenset(order)  # every idle engine goes before anyone is preempted
    else:
        assert chosen == frozenset()  # stopping would not place it: nothing is stopped


def test_a_fitting_newcomer_stops_nobody() -> None:
    assert idle_to_stop({"a": 1.0}, lambda removed: Fit.free) == frozenset()


# -- through the planner -------------------------------------------------------------------


def swap(newcomer_priority: int = 5):
    """alpha runs idle on a GPU that holds one model; a request waits for beta."""
    desired = desired_of(lazy("alpha"), lazy("beta", priority=newcomer_priority))
    observed = [running("alpha")]
    decision = decide(desired.models, {"beta": Traffic(queued=2)}, {"alpha"}, {}, now=10.0)

    def fit(removed: frozenset[str]) -> Fit:
        plan = plan_with(desired, observed, decision.keep - removed)
        if plan.models["beta"].status is not Status.running:
            return Fit.unplaced
        preempted = plan.models["alpha"].status is Status.preempted and "alpha" not in removed
        return Fit.preempting if preempted else Fit.free

    return desired, observed, decision, fit


def test_an_idle_engine_of_equal_priority_makes_room_for_a_wanted_one() -> None:
    desired, observed, decision, fit = swap()
    assert fit(frozenset()) is Fit.unplaced  # equal priority: no preemption by the usual rules
    dropped = idle_to_stop(decision.idle, fit)
    assert dropped == frozenset({"alpha"})
    plan = plan_with(desired, observed, decision.keep - dropped)
    plan = annotate(plan, desired.models, decision, {"alpha"}, dropped)
    assert [(a.action, a.model) for a in plan.actions] == [("stop", "alpha"), ("start", "beta")]
    assert "least recently used" in plan.actions[0].reason
    assert plan.models["beta"].demand == "wanted"
    assert plan.models["alpha"].demand == "running"  # still, until the stop is carried out
    assert "beta: wanted" in render_text(plan)
    assert "| `beta` | wanted |" in render_markdown(plan)
    assert '"demand": "wanted"' in render_json(plan)


def test_a_higher_priority_newcomer_stops_the_idle_engine_instead_of_preempting_it() -> None:
    *_, decision, fit = swap(newcomer_priority=9)
    assert fit(frozenset()) is Fit.preempting
    assert idle_to_stop(decision.idle, fit) == frozenset({"alpha"})


def test_a_wanted_model_waiting_for_room_is_not_reported_unschedulable() -> None:
    desired = desired_of(lazy("alpha"), lazy("beta"))
    traffic = {"alpha": Traffic(inflight=1), "beta": Traffic(queued=1)}
    decision = decide(desired.models, traffic, {"alpha"}, {}, now=10.0)
    assert decision.idle == {}
    plan = plan_with(desired, [running("alpha")], decision.keep)
    assert [u.model for u in plan.unschedulable] == ["beta"]
    plan = annotate(plan, desired.models, decision, {"alpha"}, waiting={"beta"})
    assert plan.unschedulable == ()
    assert plan.actions == ()
    assert "waits for alpha" in (plan.models["beta"].reason or "")


def test_an_idle_on_demand_model_is_still_a_fallback() -> None:
    desired = desired_of(spec("big", memory=1900, fallback="small"), lazy("small", memory=100))
    decision = decide(desired.models, {}, set(), {}, now=1.0)
    plan = plan_with(desired, [], decision.keep)
    assert plan.models["big"].status is Status.running
    assert plan.models["small"].status is Status.stopped
    blocked = desired_of(spec("big", memory=2100, fallback="small"), lazy("small", memory=100))
    plan = plan_with(blocked, [], decision.keep)
    assert plan.models["small"].status is Status.running  # runs for big, as a fallback


def test_the_plan_says_idle_for_one_nobody_asked_for() -> None:
    desired = desired_of(lazy("alpha", idle_timeout_s=30))
    decision = decide(desired.models, {}, set(), {}, now=1.0)
    plan = annotate(plan_with(desired, [], decision.keep), desired.models, decision, set())
    assert plan.actions == ()
    assert plan.models["alpha"].demand == "idle"
    assert "starts on its first request" in (plan.models["alpha"].reason or "")
    assert isinstance(decision, Decision)


# -- validation ----------------------------------------------------------------------------


def test_an_idle_timeout_needs_on_demand_activation_and_says_where() -> None:
    result = one("m", "idle_timeout_s: 30")
    message = "idle_timeout_s needs activation: on_demand"
    assert result.problems == [error(path_of("m"), 4, "idle_timeout_s", message)]
    assert result.desired is None
    accepted = one("m", "activation: on_demand", "idle_timeout_s: 30")
    assert accepted.problems == [] and accepted.desired is not None
    assert accepted.desired.models["m"].idle_timeout_s == 30
    assert one("m", "activation: sometimes").desired is None

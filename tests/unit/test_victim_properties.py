"""Victim choice against a brute force over every victim set (planner_oracle.best_victims).

Hypothesis builds the instances (GPUs, engines running with their priorities and memory, a
newcomer, a primary with its fallback), so a failure shrinks to a small host, not to a seed.
Priorities are drawn over the whole range on both sides: engines of equal and of higher priority
than the newcomer run beside lower ones, and newcomers that fit without preempting anybody are
drawn as often as ones that do not.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, event, find, given, settings
from hypothesis import strategies as st
from planner_oracle import (
    Engine,
    Newcomer,
    best_victims,
    fits,
    free_now,
    need_on,
    victim_key,
)

from reconciler.core.schedule import Demand, GpuCapacity, Running, Schedule, schedule

EXACT = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PORTS = (8100, 8199)


@dataclass(frozen=True)
class Host:
    capacity: dict[int, int]
    engines: tuple[Engine, ...]

    @property
    def free(self) -> dict[int, int]:
        return free_now(self.capacity, self.engines)


@st.composite
def hosts(draw: st.DrawFn) -> Host:
    """1-3 GPUs and up to 8 engines running on them, within capacity."""
    sizes = draw(st.lists(st.sampled_from([8000, 16000, 24000]), min_size=1, max_size=3))
    capacity = dict(enumerate(sizes))
    free = dict(capacity)
    engines = []
    for i in range(draw(st.integers(0, 8))):
        gpus = tuple(sorted(draw(st.sets(st.sampled_from(sorted(capacity)), min_size=1))))
        memory = draw(st.integers(2, 16)) * 500
        if all(free[g] >= memory for g in gpus):
            for g in gpus:
                free[g] -= memory
            engines.append(Engine(f"r{i}", draw(st.integers(1, 10)), gpus, memory))
    return Host(capacity, tuple(engines))


@st.composite
def newcomers(draw: st.DrawFn, host: Host, name: str = "a-new") -> Newcomer:
    n = len(host.capacity)
    count = draw(st.integers(1, n))
    pinned = ()
    if draw(st.booleans()):
        pinned = tuple(sorted(draw(st.permutations(sorted(host.capacity)))[:count]))
    memory = draw(st.integers(1, 24)) * 500
    return Newcomer(name, draw(st.integers(1, 10)), memory, count, pinned)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Host, Newcomer]:
    host = draw(hosts())
    return host, draw(newcomers(host))


def as_demand(new: Newcomer, **fields: object) -> Demand:
    return Demand(new.id, new.priority, new.gpu_count, new.memory_mb, new.pinned, **fields)  # type: ignore[arg-type]


def run(host: Host, *extra: Demand) -> Schedule:
    """The scheduler with every engine kept as a demand of its own, plus `extra`."""
    running = [Running(e.id, e.gpus, e.memory_mb, 8100 + i) for i, e in enumerate(host.engines)]
    demands = [*extra, *(Demand(e.id, e.priority, len(e.gpus), e.memory_mb) for e in host.engines)]
    gpus = [GpuCapacity(g, c) for g, c in host.capacity.items()]
    return schedule(demands, running, gpus, port_range=PORTS)


def victims_of(result: Schedule, host: Host, model: str) -> list[Engine]:
    return [e for e in host.engines if result.preempted.get(e.id) == model]


def check_newcomer(result: Schedule, host: Host, new: Newcomer, power: int) -> None:
    """`new` preempts nobody when it fits; otherwise exactly the oracle's best set below
    `power`, and it is placed whenever such a set exists."""
    victims = victims_of(result, host, new.id)
    if fits(new, host.free):
        event("fits without preemption")
        assert victims == [], "preempted although the newcomer fits"
        assert new.id in result.placements
        return
    best = best_victims(new, power, host.engines, host.capacity)
    if best is None:
        event("no victim set makes room")
        assert victims == [] and new.id not in result.placements
        return
    event("must preempt")
    assert new.id in result.placements, f"room possible by preempting {best}, nothing preempted"
    assert all(v.priority < power for v in victims)
    need = need_on(new, result.placements[new.id].gpus, host.free)
    assert victim_key(victims, need) == best


@EXACT
@given(cases())
def test_victims_are_the_best_set_and_only_when_needed(case: tuple[Host, Newcomer]) -> None:
    host, new = case
    check_newcomer(run(host, as_demand(new)), host, new, new.priority)


@st.composite
def fallback_cases(draw: st.DrawFn) -> tuple[Host, Newcomer, Newcomer]:
    """A primary (often too big for the host) and its disabled fallback, of any priority."""
    host = draw(hosts())
    primary = draw(newcomers(host, "a-primary"))
    fallback = draw(newcomers(host, "b-fallback"))
    return host, primary, fallback


@EXACT
@given(fallback_cases())
def test_a_fallback_preempts_only_below_its_primarys_priority(
    case: tuple[Host, Newcomer, Newcomer],
) -> None:
    host, primary, fallback = case
    result = run(
        host,
        as_demand(primary, fallback=fallback.id),
        as_demand(fallback, enabled=False),
    )
    if primary.id in result.placements:
        check_newcomer(result, host, primary, primary.priority)
        assert fallback.id not in result.placements
        return
    assert victims_of(result, host, primary.id) == []
    # the fallback's power is its primary's priority, even when its own is higher
    event("fallback above its primary" if fallback.priority > primary.priority else "fallback")
    check_newcomer(result, host, fallback, primary.priority)
    if fallback.id in result.placements:
        placed = result.placements[fallback.id]
        assert placed.fallback_for == primary.id
        assert placed.priority == max(primary.priority, fallback.priority)


@settings(max_examples=500, deadline=None)
@given(cases())
def test_no_gpu_is_over_committed(case: tuple[Host, Newcomer]) -> None:
    host, new = case
    result = run(host, as_demand(new))
    for g, size in host.capacity.items():
        assert sum(p.memory_mb for p in result.placements.values() if g in p.gpus) <= size


# -- the strategies reach the cases the properties are about ---------------------------------


def needs_preemption(case: tuple[Host, Newcomer]) -> bool:
    host, new = case
    return not fits(new, host.free) and best_victims(new, new.priority, host.engines, host.capacity)


def test_strategies_draw_newcomers_that_fit_and_that_must_preempt() -> None:
    find(cases(), lambda c: bool(c[0].engines) and fits(c[1], c[0].free))
    find(cases(), needs_preemption)


def test_strategies_draw_engines_of_equal_and_higher_priority_in_the_way() -> None:
    """Cases where an engine the newcomer may not preempt holds the room it would need."""

    def blocked_by(relation) -> object:
        def check(case: tuple[Host, Newcomer]) -> bool:
            host, new = case
            if fits(new, host.free) or not any(
                relation(e.priority, new.priority) for e in host.engines
            ):
                return False
            # with every engine preemptable it would fit: the priority rule is what decides
            return best_victims(new, 11, host.engines, host.capacity) is not None

        return check

    find(cases(), blocked_by(lambda engine, new: engine == new))
    find(cases(), blocked_by(lambda engine, new: engine > new))


def test_strategies_draw_fallbacks_that_could_preempt_more_than_their_primary() -> None:
    def check(case: tuple[Host, Newcomer, Newcomer]) -> bool:
        host, primary, fallback = case
        between = [e for e in host.engines if primary.priority <= e.priority < fallback.priority]
        return bool(between) and not fits(fallback, host.free)

    find(fallback_cases(), check)

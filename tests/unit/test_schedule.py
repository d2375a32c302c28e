"""The scheduler, rule by rule, on plain values."""

from __future__ import annotations

import pytest

from reconciler.core.schedule import (
    MEMORY_UNKNOWN,
    Demand,
    GpuCapacity,
    Placement,
    Running,
    Schedule,
    capacities,
    schedule,
)
from reconciler.core.schedule.values import GPUInfo


def cluster(*sizes: int) -> list[GpuCapacity]:
    return [GpuCapacity(i, size) for i, size in enumerate(sizes)]


def plan(
    demands: list[Demand],
    running: list[Running] = (),  # type: ignore[assignment]
    gpus: list[GpuCapacity] | None = None,
    **options,
) -> Schedule:
    return schedule(demands, list(running), gpus or cluster(24000), **options)


def where(result: Schedule) -> dict[str, tuple[int, ...]]:
    return {m: p.gpus for m, p in result.placements.items()}


# -- capacity ------------------------------------------------------------------------------


def test_capacity_is_total_minus_reserved_minus_unmanaged() -> None:
    gpus = [
        GPUInfo(1, "b", 24000, unmanaged_mb=3000),
        GPUInfo(0, "a", 16000),
        GPUInfo(2, "c", 1000, unmanaged_mb=900),
    ]
    assert capacities(gpus, 512) == [
        GpuCapacity(0, 15488),
        GpuCapacity(1, 20488),
        GpuCapacity(2, 0),
    ]


def test_priority_outside_range_is_refused() -> None:
    with pytest.raises(ValueError, match="priority 11"):
        plan([Demand("a", 11, 1, 100)])


# -- placement -----------------------------------------------------------------------------


def test_highest_priority_first_then_id() -> None:
    result = plan(
        [Demand("low", 2, 1, 15000), Demand("b", 7, 1, 15000), Demand("a", 7, 1, 15000)],
        gpus=cluster(16000, 16000),
    )
    assert where(result) == {"a": (0,), "b": (1,)}
    assert result.unschedulable == {
        "low": "needs 15000 MiB on 1 GPU; most free is 1000 MiB on GPU 0"
    }


def test_spread_takes_the_most_free_gpu_and_pack_the_best_fit() -> None:
    gpus = cluster(24000, 16000, 40000)
    demands = [Demand("a", 5, 1, 10000)]
    assert where(plan(demands, gpus=gpus, placement="spread")) == {"a": (2,)}
    assert where(plan(demands, gpus=gpus, placement="pack")) == {"a": (1,)}


def test_ties_between_gpus_go_to_the_lowest_index() -> None:
    gpus = cluster(24000, 24000, 24000)
    assert where(plan([Demand("a", 5, 2, 100)], gpus=gpus)) == {"a": (0, 1)}
    assert where(plan([Demand("a", 5, 2, 100)], gpus=gpus, placement="pack")) == {"a": (0, 1)}


def test_pack_leaves_big_holes_for_big_models() -> None:
    demands = [Demand("small", 9, 1, 6000), Demand("big", 5, 1, 20000)]
    gpus = cluster(8000, 24000)
    assert where(plan(demands, gpus=gpus, placement="pack")) == {"small": (0,), "big": (1,)}
    spread = plan(demands, gpus=gpus, placement="spread")
    assert where(spread) == {"small": (1,)} and "big" in spread.unschedulable


def test_pack_leaves_room_for_the_models_to_come() -> None:
    # best fit alone would put "a" on GPU 1, the only GPU "b" may use
    demands = [Demand("a", 9, 1, 12000), Demand("b", 8, 1, 14000, pinned=(1,))]
    result = plan(demands, gpus=cluster(24000, 16000), placement="pack")
    assert where(result) == {"a": (0,), "b": (1,)}


def test_spread_breaks_ties_between_equally_free_gpus_by_looking_ahead() -> None:
    demands = [Demand("a", 9, 1, 10000), Demand("b", 8, 1, 20000, pinned=(0,))]
    assert where(plan(demands, gpus=cluster(24000, 24000))) == {"a": (1,), "b": (0,)}
    # spread still never picks a less free GPU to make room
    assert where(plan(demands, gpus=cluster(25000, 24000))) == {"a": (0,)}


def test_multi_gpu_models_get_all_their_gpus_at_once_or_none() -> None:
    result = plan([Demand("a", 5, 1, 20000), Demand("b", 4, 2, 10000)], gpus=cluster(24000, 8000))
    assert where(result) == {"a": (0,)}
    assert result.unschedulable == {
        "b": "needs 10000 MiB on each of 2 GPUs; 0 GPUs have that much free"
    }
    result = plan([Demand("b", 4, 2, 10000)], gpus=cluster(24000, 12000, 8000), placement="pack")
    assert where(result) == {"b": (0, 1)}


def test_pins_are_respected_even_when_another_gpu_has_more_room() -> None:
    result = plan([Demand("a", 5, 1, 1000, pinned=(0,))], gpus=cluster(8000, 40000))
    assert where(result) == {"a": (0,)}
    result = plan([Demand("a", 5, 1, 9000, pinned=(0,))], gpus=cluster(8000, 40000))
    assert result.unschedulable == {"a": "needs 9000 MiB on pinned GPU 0; GPU 0 has 8000 MiB free"}


def test_impossible_requests_say_why() -> None:
    result = plan(
        [
            Demand("nomem", 5, 1, None),
            Demand("ghost", 5, 1, 100, pinned=(3,)),
            Demand("greedy", 5, 4, 100),
        ],
        gpus=cluster(100, 100),
    )
    assert result.placements == {}
    assert result.unschedulable == {
        "ghost": "pinned GPU 3 does not exist (GPUs: 0, 1)",
        "greedy": "needs 4 GPUs but the host has 2",
        "nomem": MEMORY_UNKNOWN,
    }
    assert "resource_requirements.gpu_memory_mb" in MEMORY_UNKNOWN


def test_cpu_only_models_always_fit_and_get_a_port() -> None:
    result = plan([Demand("gpu", 9, 1, 24000), Demand("cpu", 1, 0, None)], gpus=cluster(24000))
    assert result.placements["cpu"] == Placement("cpu", (), 0, 8101, 1)
    assert result.placements["gpu"].port == 8100


def test_disabled_models_are_not_placed() -> None:
    assert plan([Demand("a", 5, 1, 100, enabled=False)]).placements == {}


# -- stability -----------------------------------------------------------------------------


def test_running_models_stay_where_they_are() -> None:
    running = [Running("a", (0,), 20000, 8107)]
    # spread would prefer GPU 1 for a new model; the running one is not moved to get there
    result = plan([Demand("a", 3, 1, 20000)], running, cluster(24000, 40000))
    assert result.placements["a"] == Placement("a", (0,), 20000, 8107, 3)


def test_a_priority_change_keeps_the_engine_where_it_is() -> None:
    running = [Running("a", (1,), 8000, 8100), Running("b", (0,), 8000, 8101)]
    demands = [Demand("a", 10, 1, 8000), Demand("b", 1, 1, 8000)]
    result = plan(demands, running, cluster(24000, 24000))
    assert where(result) == {"a": (1,), "b": (0,)}
    assert result.preempted == {}


def test_running_engines_keep_their_reservation_until_they_restart() -> None:
    # the spec now asks for more memory; the engine was started with less and is not moved
    result = plan([Demand("a", 5, 1, 30000)], [Running("a", (0,), 8000, 8100)])
    assert result.placements["a"].memory_mb == 8000


def test_an_engine_that_must_restart_stays_on_its_gpu_when_it_fits() -> None:
    running = [Running("a", (0,), 8000, 8100, reusable=False)]
    result = plan([Demand("a", 5, 1, 12000)], running, cluster(24000, 40000))
    assert result.placements["a"] == Placement("a", (0,), 12000, 8100, 5)


def test_a_restart_in_place_keeps_its_gpu_from_equal_priorities() -> None:
    running = [Running("b", (0,), 8000, 8100, reusable=False)]
    demands = [Demand("a", 5, 1, 20000), Demand("b", 5, 1, 10000)]
    result = plan(demands, running)
    assert where(result) == {"b": (0,)}
    assert "a" in result.unschedulable


def test_an_engine_that_no_longer_fits_is_placed_again() -> None:
    # the GPU shrank (more reserved memory): the lower priority engine must find room elsewhere
    running = [Running("a", (0,), 10000, 8100), Running("b", (0,), 10000, 8101)]
    demands = [Demand("a", 9, 1, 10000), Demand("b", 1, 1, 10000)]
    result = plan(demands, running, cluster(15000, 12000))
    assert where(result) == {"a": (0,), "b": (1,)}
    assert result.preempted == {}


# -- preemption ----------------------------------------------------------------------------


def preempt_for(
    new: Demand, running: list[tuple[str, int, int]], gpus: list[GpuCapacity] | None = None
) -> Schedule:
    """`new` arrives while (id, priority, memory) engines run, each on GPU 0."""
    demands = [new, *(Demand(m, p, 1, mem) for m, p, mem in running)]
    engines = [Running(m, (0,), mem, 8100 + i) for i, (m, _, mem) in enumerate(running)]
    return plan(demands, engines, gpus)


def test_victims_have_the_lowest_possible_highest_priority() -> None:
    result = preempt_for(
        Demand("new", 9, 1, 10000), [("p5", 5, 12000), ("p2a", 2, 6000), ("p2b", 2, 6000)]
    )
    assert result.preempted == {"p2a": "new", "p2b": "new"}


def test_then_the_fewest_victims() -> None:
    running = [("a", 3, 4000), ("b", 3, 4000), ("c", 3, 9000), ("d", 3, 7000)]
    result = preempt_for(Demand("new", 9, 1, 8000), running)
    assert result.preempted == {"c": "new"}


def test_then_the_least_memory_freed_beyond_need() -> None:
    running = [("a", 3, 10000), ("b", 3, 7000), ("c", 3, 6000)]
    result = preempt_for(Demand("new", 9, 1, 5000), running, cluster(24000))
    # needs 4000 more: c (6000) frees the least beyond need
    assert result.preempted == {"c": "new"}


def test_ties_go_to_the_lowest_ids() -> None:
    running = [("b", 3, 6000), ("a", 3, 6000), ("c", 3, 12000)]
    result = preempt_for(Demand("new", 9, 1, 6000), running)
    assert result.preempted == {"a": "new"}


def test_memory_a_victim_frees_on_other_gpus_counts_as_excess() -> None:
    demands = [
        Demand("new", 9, 1, 12000),
        Demand("wide", 3, 2, 8000),
        Demand("narrow", 3, 1, 10000),
    ]
    running = [Running("wide", (0, 1), 8000, 8100), Running("narrow", (0,), 10000, 8101)]
    result = plan(demands, running, cluster(24000, 24000))
    # GPU 1 has room; on GPU 0 evicting wide (16000 freed in all) would waste more than narrow
    assert where(result)["new"] == (1,)
    assert result.preempted == {}
    result = plan(demands, running, cluster(24000, 8000))
    assert result.preempted == {"narrow": "new"}


def pinned_on_two(low: int) -> Schedule:
    """`new` is pinned to GPUs 0 and 1; `wide` (priority 2) holds both, x and y one each."""
    demands = [
        Demand("new", 9, 2, 10000, pinned=(0, 1)),
        Demand("wide", 2, 2, 10000),
        Demand("x", low, 1, 10000),
        Demand("y", low, 1, 10000),
    ]
    running = [
        Running("wide", (0, 1), 10000, 8100),
        Running("x", (0,), 10000, 8101),
        Running("y", (1,), 10000, 8102),
    ]
    return plan(demands, running, cluster(20000, 20000))


def test_a_pinned_model_prefers_one_victim_on_both_its_gpus() -> None:
    result = pinned_on_two(low=2)
    assert result.preempted == {"wide": "new"}
    assert where(result) == {"new": (0, 1), "x": (0,), "y": (1,)}


def test_lower_victim_priorities_come_before_fewer_victims() -> None:
    result = pinned_on_two(low=1)
    assert result.preempted == {"x": "new", "y": "new"}
    assert where(result) == {"new": (0, 1), "wide": (0, 1)}


def test_nothing_is_preempted_when_even_every_victim_would_not_make_room() -> None:
    result = preempt_for(Demand("new", 9, 1, 30000), [("a", 3, 8000), ("b", 9, 8000)])
    assert result.preempted == {}
    assert where(result) == {"a": (0,), "b": (0,)}
    assert result.unschedulable == {
        "new": "needs 30000 MiB on 1 GPU; most free is 16000 MiB on GPU 0"
        " after preempting every lower priority"
    }


def test_equal_priority_is_never_preempted() -> None:
    result = preempt_for(Demand("new", 5, 1, 20000), [("a", 5, 20000)])
    assert result.preempted == {}
    assert result.unschedulable == {
        "new": "needs 20000 MiB on 1 GPU; most free is 4000 MiB on GPU 0"
    }


def test_a_victim_comes_back_elsewhere_when_there_is_room() -> None:
    demands = [Demand("new", 9, 1, 20000, pinned=(0,)), Demand("old", 3, 1, 10000)]
    running = [Running("old", (0,), 10000, 8100)]
    result = plan(demands, running, cluster(24000, 12000))
    assert result.preempted == {"old": "new"}
    assert result.placements["old"] == Placement("old", (1,), 10000, 8100, 3)


def test_preempted_models_do_not_preempt_equal_or_higher_priorities() -> None:
    # "waiting" was preempted earlier and is not running: it is just desired
    demands = [Demand("waiting", 5, 1, 20000), Demand("same", 5, 1, 20000)]
    result = plan(demands, [Running("same", (0,), 20000, 8100)])
    assert where(result) == {"same": (0,)}
    assert result.preempted == {}


# -- fallbacks -----------------------------------------------------------------------------


def test_a_fallback_runs_in_place_of_an_unschedulable_primary() -> None:
    demands = [
        Demand("big", 8, 1, 30000, fallback="small"),
        Demand("small", 3, 1, 4000, enabled=False),
    ]
    result = plan(demands)
    assert result.placements == {"small": Placement("small", (0,), 4000, 8100, 8, "big")}
    assert result.unschedulable == {
        "big": "needs 30000 MiB on 1 GPU; most free is 24000 MiB on GPU 0"
    }


def test_a_fallback_chain_is_followed_until_something_fits() -> None:
    demands = [
        Demand("xl", 4, 1, 40000, fallback="l"),
        Demand("l", 9, 1, 30000, fallback="s", enabled=False),
        Demand("s", 2, 1, 4000, enabled=False),
    ]
    result = plan(demands)
    assert result.placements == {"s": Placement("s", (0,), 4000, 8100, 9, "l")}
    assert result.unschedulable["l"].startswith("fallback for xl: needs 30000 MiB")


def test_no_fallback_while_the_primary_fits() -> None:
    demands = [
        Demand("big", 8, 1, 20000, fallback="small"),
        Demand("small", 3, 1, 4000, enabled=False),
    ]
    assert where(plan(demands)) == {"big": (0,)}


def test_a_fallback_on_standby_does_not_block_its_primary() -> None:
    demands = [
        Demand("big", 5, 1, 20000, fallback="small"),
        Demand("small", 5, 1, 8000, enabled=False),
    ]
    running = [Running("small", (0,), 8000, 8100)]
    # 24000 free once the fallback's 8000 count as free: the primary starts, the fallback goes
    assert where(plan(demands, running)) == {"big": (0,)}
    # no room even so: the fallback stays where it is
    result = plan(demands, running, cluster(18000))
    assert result.placements == {"small": Placement("small", (0,), 8000, 8100, 5, "big")}


def test_a_fallback_on_standby_is_protected_at_its_primarys_priority() -> None:
    demands = [
        Demand("big", 8, 1, 30000, fallback="small"),
        Demand("small", 2, 1, 8000, enabled=False),
        Demand("other", 6, 1, 20000),
    ]
    result = plan(demands, [Running("small", (0,), 8000, 8100)])
    assert where(result) == {"small": (0,)}
    assert result.preempted == {}
    assert "other" in result.unschedulable


def test_an_enabled_fallback_of_a_placed_primary_is_an_ordinary_model() -> None:
    demands = [
        Demand("top", 9, 1, 20000, fallback="helper"),
        Demand("helper", 2, 1, 2000),
        Demand("mid", 6, 1, 4000),
    ]
    result = plan(demands, [Running("top", (0,), 20000, 8100), Running("helper", (0,), 2000, 8101)])
    assert result.preempted == {"helper": "mid"}


def test_a_fallback_preempts_only_what_its_primary_could() -> None:
    # a fallback runs at max(primary, own) priority, but preempting "mid" (5) for the primary's
    # stand-in would let the primary (5) take that room on the next pass: they would take turns
    demands = [
        Demand("big", 5, 1, 30000, fallback="stand-in"),
        Demand("stand-in", 8, 1, 12000, enabled=False),
        Demand("mid", 5, 1, 16000),
    ]
    result = plan(demands, [Running("mid", (0,), 16000, 8100)])
    assert result.preempted == {}
    assert where(result) == {"mid": (0,)}
    assert result.unschedulable["stand-in"] == (
        "fallback for big: needs 12000 MiB on 1 GPU; most free is 8000 MiB on GPU 0"
    )
    # what the primary itself could preempt, its fallback may preempt too
    demands[2] = Demand("mid", 4, 1, 16000)
    result = plan(demands, [Running("mid", (0,), 16000, 8100)])
    assert result.preempted == {"mid": "stand-in"}
    assert result.placements["stand-in"] == Placement("stand-in", (0,), 12000, 8101, 8, "big")


def test_a_model_that_gave_up_is_not_placed_and_its_fallback_runs() -> None:
    demands = [
        Demand("a", 5, 1, 1000, fallback="b", blocked="gave up after 5 retries: OOM"),
        Demand("b", 3, 1, 1000, enabled=False),
    ]
    result = plan(demands)
    assert result.unschedulable == {"a": "gave up after 5 retries: OOM"}
    assert result.placements["b"].fallback_for == "a"


# -- ports ---------------------------------------------------------------------------------


def test_ports_fixed_kept_or_lowest_free() -> None:
    demands = [
        Demand("fixed", 5, 0, port=8100),
        Demand("kept", 5, 0),
        Demand("new", 5, 0),
        Demand("other", 1, 0),
    ]
    running = [Running("kept", (), 0, 8103), Running("gone", (), 0, 8101)]
    ports = {m: p.port for m, p in plan(demands, running).placements.items()}
    # 8100 is fixed, 8101 held by an engine that is stopped, 8103 kept by its engine
    assert ports == {"fixed": 8100, "kept": 8103, "new": 8102, "other": 8104}


def test_a_running_engine_on_a_port_now_fixed_for_another_model_gets_a_new_one() -> None:
    demands = [Demand("a", 5, 0), Demand("b", 5, 0, port=8100)]
    ports = {m: p.port for m, p in plan(demands, [Running("a", (), 0, 8100)]).placements.items()}
    assert ports == {"a": 8101, "b": 8100}


def test_no_port_left_makes_a_model_unschedulable_and_it_preempts_nobody() -> None:
    demands = [Demand("x", 9, 0), Demand("b", 9, 1, 20000), Demand("c", 1, 1, 20000)]
    # c would have to go for b's memory, but b has no port (c's is outside the range): c stays
    running = [Running("x", (), 0, 8100), Running("c", (0,), 20000, 8150)]
    result = plan(demands, running, port_range=(8100, 8100))
    assert result.unschedulable == {"b": "no free port in 8100-8100"}
    assert result.preempted == {}
    assert where(result) == {"x": (), "c": (0,)}


def test_when_ports_run_out_a_lower_priority_engine_is_preempted_for_its_port() -> None:
    demands = [Demand("a", 5, 0), Demand("b", 2, 0), Demand("c", 2, 0), Demand("new", 9, 0)]
    running = [Running("a", (), 0, 8100), Running("b", (), 0, 8101), Running("c", (), 0, 8102)]
    result = plan(demands, running, port_range=(8100, 8102))
    assert result.preempted == {"b": "new"}
    assert {m: p.port for m, p in result.placements.items()} == {"a": 8100, "c": 8102, "new": 8101}


def test_a_preemptor_takes_the_port_of_its_victim_when_the_range_is_exhausted() -> None:
    demands = [Demand("b", 9, 1, 20000), Demand("c", 1, 1, 20000)]
    result = plan(demands, [Running("c", (0,), 20000, 8100)], port_range=(8100, 8100))
    assert result.preempted == {"c": "b"}
    assert result.placements["b"].port == 8100


def test_a_port_of_an_engine_this_plan_stops_is_given_only_when_needed() -> None:
    running = [Running("gone", (), 0, 8100)]
    assert plan([Demand("a", 5, 0)], running, port_range=(8100, 8101)).placements["a"].port == 8101
    assert plan([Demand("a", 5, 0)], running, port_range=(8100, 8100)).placements["a"].port == 8100


# -- determinism ---------------------------------------------------------------------------


def test_the_order_of_the_input_does_not_matter() -> None:
    demands = [Demand(f"m{i}", 1 + i % 4, 1 + i % 2, 3000 + 700 * i) for i in range(12)]
    running = [Running("m3", (1,), 5100, 8100), Running("m7", (0,), 7900, 8101)]
    gpus = cluster(24000, 24000, 16000)
    assert plan(demands, running, gpus) == plan(demands[::-1], running[::-1], gpus[::-1])

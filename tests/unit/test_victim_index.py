"""The single-victim index finds the same victims as the scan of every GPU it replaces.

The scan (`Victims._victims` without the index) is the one `test_victim_properties` holds to the
brute-force oracle on small hosts; here hosts are large enough for the index to matter (tens of
GPUs, engines on one and on several GPUs), and every schedule is computed twice: with the index,
and with it switched off so that every GPU is scanned. The two must agree in every placement,
preemption and reason.
"""

from __future__ import annotations

from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.schedule import Demand, GpuCapacity, Running, Schedule, schedule
from reconciler.core.schedule.board import VictimIndex

PORTS = (20000, 20999)
SAME = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def crowded_hosts(draw: st.DrawFn) -> tuple[list[Demand], list[Running], list[GpuCapacity]]:
    """Many GPUs filled by engines of every priority, and newcomers that must preempt."""
    n_gpus = draw(st.integers(3, 40))
    capacity = [draw(st.sampled_from([16000, 24000, 40000, 80000])) for _ in range(n_gpus)]
    free = list(capacity)
    demands, running = [], []
    for i in range(draw(st.integers(0, 80))):
        count = draw(st.sampled_from([1, 1, 2, 3]))
        gpus = tuple(
            sorted(draw(st.sets(st.integers(0, n_gpus - 1), min_size=count, max_size=count)))
        )
        memory = draw(st.integers(1, 40)) * 500
        if all(free[g] >= memory for g in gpus):
            for g in gpus:
                free[g] -= memory
            model = f"r{i:02d}"
            priority = draw(st.integers(1, 10))
            demands.append(Demand(model, priority, len(gpus), memory))
            running.append(Running(model, gpus, memory, 20000 + i))
    for i in range(draw(st.integers(1, 8))):
        count = draw(st.sampled_from([1, 1, 1, 2]))
        memory = draw(st.integers(1, 60)) * 500
        demands.append(Demand(f"new{i}", draw(st.integers(1, 10)), count, memory))
    return demands, running, [GpuCapacity(g, c) for g, c in enumerate(capacity)]


def scanned(
    demands: list[Demand], running: list[Running], gpus: list[GpuCapacity], policy: str
) -> Schedule:
    """The schedule with the index switched off: every search scans every GPU."""
    with (
        mock.patch.object(VictimIndex, "best", return_value=None),
        mock.patch.object(VictimIndex, "lowest_level", return_value=None),
    ):
        return schedule(demands, running, gpus, placement=policy, port_range=PORTS)  # type: ignore[arg-type]


@SAME
@given(crowded_hosts(), st.sampled_from(["spread", "pack"]))
def test_the_index_chooses_what_scanning_every_gpu_chooses(case, policy: str) -> None:
    demands, running, gpus = case
    indexed = schedule(demands, running, gpus, placement=policy, port_range=PORTS)  # type: ignore[arg-type]
    assert indexed == scanned(demands, running, gpus, policy)


def test_the_victim_freeing_least_beyond_need_is_found_on_any_gpu() -> None:
    """40 GPUs, each with a large engine the newcomer may not preempt and a small one it may.
    Only on GPU 27 does preempting the small engine leave exactly what the newcomer needs; on
    the GPUs with more room it would leave more, on the others not enough."""
    large = {g: 15000 if g % 3 == 0 else 13000 - 10 * g for g in range(40)}
    large[27] = 14000
    gpus = [GpuCapacity(g, 24000) for g in range(40)]
    running, demands = [], []
    for g in range(40):
        for name, priority, memory in ((f"large{g:02d}", 9, large[g]), (f"small{g:02d}", 1, 4000)):
            running.append(Running(name, (g,), memory, 20000 + len(running)))
            demands.append(Demand(name, priority, 1, memory))
    demands.append(Demand("newcomer", 5, 1, 10000))
    for policy in ("spread", "pack"):
        result = schedule(demands, running, gpus, placement=policy, port_range=PORTS)
        assert result.preempted == {"small27": "newcomer"}
        assert result.placements["newcomer"].gpus == (27,)

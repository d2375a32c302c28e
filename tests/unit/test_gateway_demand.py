"""When the gateway's demand asks the loop for a pass (reconciler.gateway.demand.DemandWatch)."""

from __future__ import annotations

from pathlib import Path

from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState
from reconciler.core.spec import ModelSpec
from reconciler.gateway.demand import DemandWatch, parse


def spec(mid: str, **fields) -> ModelSpec:
    return ModelSpec(id=mid, framework="vllm", model_path=f"org/{mid}", **fields)


DESIRED = DesiredState(
    {
        "lazy": spec("lazy", activation="on_demand", idle_timeout_s=5),
        "busy": spec("busy"),
    },
    ClusterSpec(),
    None,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(tmp_path: Path) -> tuple[DemandWatch, Clock]:
    clock = Clock()
    demand = DemandWatch(lambda timeout_s: None, lambda reason: None, lambda: DESIRED, clock=clock)
    return demand, clock


def report(**models: dict) -> dict:
    return {"generation": 1, "instances": {}, "models": models}


def test_a_request_for_a_cold_on_demand_model_asks_for_a_pass_once_per_change(
    tmp_path: Path,
) -> None:
    demand, clock = watch(tmp_path)
    cold = report(lazy={"status": "cold", "queued": 2, "inflight": 0, "last_request_at": 999.0})
    assert "lazy" in (demand.check(cold, DESIRED) or "")
    clock.now += 0.2
    assert demand.check(cold, DESIRED) is None  # nothing changed: one pass was asked for
    clock.now += 2.0
    assert demand.check(cold, DESIRED) is not None  # still waiting: ask again
    in_use = report(
        lazy={"status": "cold", "queued": 1, "inflight": 0},
        busy={"status": "running", "queued": 0, "inflight": 1},
    )
    assert demand.check(in_use, DESIRED) is not None  # what is wanted changed


def test_a_starting_always_model_with_a_queue_asks_for_nothing(tmp_path: Path) -> None:
    demand, _ = watch(tmp_path)
    starting = report(busy={"status": "starting", "queued": 3, "inflight": 0})
    assert demand.check(starting, DESIRED) is None


def test_an_idle_timeout_falling_due_asks_for_one_pass(tmp_path: Path) -> None:
    demand, clock = watch(tmp_path)
    idle = report(lazy={"status": "running", "queued": 0, "inflight": 0, "last_request_at": 996.0})
    assert demand.check(idle, DESIRED) is None  # 4 s idle of 5
    clock.now = 1001.0
    assert "idle" in (demand.check(idle, DESIRED) or "")
    assert demand.check(idle, DESIRED) is None
    busy = report(lazy={"status": "running", "queued": 0, "inflight": 1, "last_request_at": 900.0})
    assert demand.check(busy, DESIRED) is None  # a request in flight: never idle


def test_the_report_becomes_traffic() -> None:
    traffic = parse(report(lazy={"status": "cold", "queued": 1, "inflight": 0}))
    assert traffic["lazy"].wanted and traffic["lazy"].last_request_at is None

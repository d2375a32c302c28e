"""One model's problem is that model's: a pass goes on whatever one model's spec or engine raises.

Validation refuses most hostile specs, so these tests hand the pass an already-built desired
state (as a bug in validation would let through): an environment value with a NUL, an
environment name with `=`, an integer of thousands of digits, a memory estimate that overflows,
an engine whose start or stop raises. Beside them, normal models on the vLLM stand-in (real
processes) must converge, and the hostile ones must end in `error` with the reason, once: no
event storm, no busy loop.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apply_support import Host, managed_host, running, stand_in, vllm_wrapper

from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState, Problem
from reconciler.core.instance import Status
from reconciler.core.plan import Plan, make_plan
from reconciler.core.spec import ModelSpec, RetryPolicy
from reconciler.engines.base import Engine, EnginePlacement, Handle
from reconciler.engines.registry import engines as registry_engines
from reconciler.loop.controller import Controller, converge
from reconciler.loop.planning import Requirements
from reconciler.loop.reconcile import Reconciler, Settings
from reconciler.state.directory import namespace_for

CONVERGE_S = 120.0  # a generous bound: only a hang runs into it


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    with managed_host(tmp_path) as host:
        monkeypatch.setenv("RECONCILER_VLLM", str(vllm_wrapper(tmp_path / "bin")))
        yield host


class Given(Reconciler):
    """A reconciler that is handed its desired state instead of loading and validating it."""

    def __init__(self, host: Host, desired: DesiredState, **kwargs: Any) -> None:
        super().__init__(Settings(host.desired, host.state_dir, stop_grace_s=5), **kwargs)
        self.given = desired

    def load_desired(self) -> tuple[DesiredState | None, list[Problem]]:
        return self.given, []


class Sabotaged:
    """A real engine whose start or stop raises for chosen models."""

    def __init__(self, engine: Engine, start: dict[str, Exception], stop: dict[str, Exception]):
        self.engine, self.start_raises, self.stop_raises = engine, start, stop

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def start(self, spec: ModelSpec, placement: EnginePlacement) -> Handle:
        if spec.id in self.start_raises:
            raise self.start_raises[spec.id]
        return self.engine.start(spec, placement)

    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        if handle.model_id in self.stop_raises:
            raise self.stop_raises[handle.model_id]
        self.engine.stop(handle, grace_s)


class Overflowing(Requirements):
    """The memory estimate of one model raises, as an estimate of absurd numbers can."""

    def __init__(self, model_id: str) -> None:
        super().__init__()
        self.model_id = model_id

    def of(self, spec: ModelSpec, gpu_total_mb: int | None) -> int | None:
        if spec.id == self.model_id:
            raise OverflowError("int too large to convert to float")
        return super().of(spec, gpu_total_mb)


def spec(model_id: str, **update: Any) -> ModelSpec:
    """A normal stand-in spec, then `update` applied without validation."""
    return ModelSpec.model_validate(stand_in(model_id)).model_copy(update=update)


def desired_state(host: Host, *specs: ModelSpec) -> DesiredState:
    cluster = ClusterSpec.model_validate(
        {"gpus": [{"index": 0, "memory_mb": 80000}], "port_range": list(host.port_range)}
    )
    return DesiredState({s.id: s for s in specs}, cluster, "test")


def sabotaged_engines(
    host: Host, start: dict[str, Exception] | None = None, stop: dict[str, Exception] | None = None
) -> dict[str, Engine]:
    found = registry_engines(host.state_dir, namespace_for(host.state_dir))
    found["vllm"] = Sabotaged(found["vllm"], start or {}, stop or {})  # type: ignore[assignment]
    return found


def answers(host: Host, model_id: str) -> bool:
    url = f"http://127.0.0.1:{host.port(model_id)}/health"
    return httpx.get(url, timeout=5, trust_env=False).status_code == 200


def assert_quiet(reconciler: Reconciler, host: Host, passes: int = 3) -> None:
    """Further passes change nothing and say nothing: a repeated failure costs no work."""
    before = len(host.events())
    for _ in range(passes):
        result = reconciler.pass_once()
        assert result.executed == [] and result.settled, result
    assert len(host.events()) == before, host.events()[before:]


def test_hostile_specs_beside_normal_ones_the_normal_ones_converge(host: Host) -> None:
    desired = desired_state(
        host,
        spec("normal-a"),
        spec("nul-env", env={"EXTRA": "a\x00b"}),
        spec("eq-env", env={"A=B": "1"}),
        spec("huge-int", parameters={"max-model-len": 10**5000}),
        spec("estimate"),
        spec("normal-b"),
    )
    reconciler = Given(host, desired)
    reconciler.requirements = Overflowing("estimate")

    results = converge(reconciler, CONVERGE_S)

    assert results[-1].settled, results[-1]
    running(host, "normal-a", "normal-b")
    assert answers(host, "normal-a") and answers(host, "normal-b")
    for model_id in ("nul-env", "eq-env", "huge-int", "estimate"):
        model = host.model(model_id)
        assert model.status == Status.error and model.last_error, model
        assert model_id not in host.engines()
        assert len(host.events("error", model_id)) == 1, host.events(model=model_id)
    assert "Exceeds the limit" in (host.model("huge-int").last_error or "")
    assert "memory cannot be estimated: OverflowError" in (host.model("estimate").last_error or "")
    assert_quiet(reconciler, host)


def test_a_fixed_spec_starts_at_once(host: Host) -> None:
    broken = desired_state(host, spec("m", parameters={"max-model-len": 10**5000}))
    reconciler = Given(host, broken)
    converge(reconciler, CONVERGE_S)
    assert host.model("m").status == Status.error

    reconciler.given = desired_state(host, spec("m"))
    converge(reconciler, CONVERGE_S)
    running(host, "m")


def test_a_start_or_stop_that_raises_is_that_models_error(host: Host) -> None:
    first = desired_state(host, spec("kept"), spec("stuck"))
    converge(Given(host, first), CONVERGE_S)
    running(host, "kept", "stuck")
    kept_pid, stuck_pid = host.pid("kept"), host.pid("stuck")

    # stuck is removed but its engine cannot be stopped; flaky's start hits a passing OS error;
    # broken's start raises something no retry fixes; added must start all the same
    engines = sabotaged_engines(
        host,
        start={"flaky": OSError(24, "Too many open files"), "broken": RuntimeError("bug")},
        stop={"stuck": PermissionError(1, "Operation not permitted")},
    )
    patient = RetryPolicy(max_retries=100, backoff_s=30, max_backoff_s=60)
    flaky = spec("flaky", retry_policy=patient)
    second = desired_state(host, spec("kept"), flaky, spec("broken"), spec("added"))
    reconciler = Given(host, second, engines=engines)
    converge(reconciler, 5)  # flaky's retry keeps it from settling: bounded by the timeout

    running(host, "kept", "added")
    assert host.pid("kept") == kept_pid
    stuck = host.model("stuck")
    assert stuck.status == Status.error
    assert "could not stop its engine: PermissionError" in (stuck.last_error or "")
    assert host.pid("stuck") == stuck_pid, "left as it was"
    model = host.model("flaky")
    assert model.status == Status.error and not model.given_up, "a passing error is retried"
    assert "Too many open files" in (model.last_error or "")
    assert model.restarts_total == 1 and model.next_retry_at is not None
    assert host.model("broken").status == Status.error


class Failing:
    """A reconciler whose every pass raises (a bug): what the daemon loop does with it."""

    settings = Settings(Path("."), Path("."))
    last_handles: dict[str, list[Handle]] = {}

    def __init__(self) -> None:
        self.passes: list[float] = []

    def pass_once(self) -> None:
        self.passes.append(time.monotonic())
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")

    def next_probe_at(self) -> None:
        return None


def test_a_pass_that_keeps_failing_is_retried_with_growing_pauses() -> None:
    controller = Controller(Failing())  # type: ignore[arg-type]
    pauses = []
    for _ in range(8):
        assert controller._pass(["test"]) is None
        pauses.append(controller._next_deadline(None) - time.monotonic())
    assert pauses[0] == pytest.approx(1.0, abs=0.25)
    assert all(b > a for a, b in itertools.pairwise(pauses[:7])), pauses
    assert max(pauses) <= controller.settings.resync_s
    assert pauses[-1] >= 0.8 * controller.settings.resync_s


def test_a_running_model_whose_estimate_starts_to_fail_is_stopped_alone(host: Host) -> None:
    desired = desired_state(host, spec("kept"), spec("estimate"))
    reconciler = Given(host, desired)
    converge(reconciler, CONVERGE_S)
    running(host, "kept", "estimate")
    kept_pid = host.pid("kept")

    reconciler.requirements = Overflowing("estimate")
    converge(reconciler, CONVERGE_S)

    model = host.model("estimate")
    assert model.status == Status.error, model
    assert "memory cannot be estimated: OverflowError" in (model.last_error or "")
    assert "estimate" not in host.engines()
    assert host.pid("kept") == kept_pid
    assert_quiet(reconciler, host)


def test_a_model_the_planner_chokes_on_is_set_aside(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    def choking(desired: DesiredState, *args: Any, **kwargs: Any) -> Plan:
        if "poison" in desired.models:  # as a planner bug set off by one model's data
            raise ZeroDivisionError("division by zero")
        return make_plan(desired, *args, **kwargs)

    desired = desired_state(host, spec("a"), spec("poison"), spec("b"))
    reconciler = Given(host, desired, make_plan=choking)
    converge(reconciler, CONVERGE_S)

    running(host, "a", "b")
    model = host.model("poison")
    assert model.status == Status.error
    assert model.last_error == "it cannot be planned: ZeroDivisionError: division by zero"
    # never swallowed: the traceback is in the log, the model's error in the event log
    failures = [r for r in caplog.records if r.name == "reconciler.loop.planning" and r.exc_info]
    assert failures and "planning failed" in failures[0].getMessage()
    errors = [e for e in host.events() if e["kind"] == "error" and e["model"] == "poison"]
    assert [e["message"] for e in errors] == [model.last_error]
    assert_quiet(reconciler, host)

"""Carrying out a plan: whether a model's start runs is decided by what its stop did (a typed
result), never by the wording of the line a person reads."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import pytest

from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import EngineError, EnginePlacement, Handle
from reconciler.loop.execution import Executor
from reconciler.loop.records import Records
from reconciler.loop.supervision import Supervisor

NOW = 1_000.0


class FakeEngine:
    """Stops fail for the models in `unstoppable`, starts for those in `unstartable`."""

    framework = "llama_cpp"

    def __init__(self, unstoppable: set[str], unstartable: set[str]) -> None:
        self.unstoppable, self.unstartable = unstoppable, unstartable
        self.started: list[str] = []
        self.stopped: list[str] = []

    def start(self, spec: ModelSpec, placement: EnginePlacement) -> Handle:
        if spec.id in self.unstartable:
            raise EngineError(f"error starting {spec.id}: no such file")
        self.started.append(spec.id)
        return Handle(spec.id, self.framework, spec.spec_hash(), placement.port, (), 100, NOW)

    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        if handle.model_id in self.unstoppable:
            raise OSError(f"error {handle.model_id}: permission denied")
        self.stopped.append(handle.model_id)


def spec(mid: str) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": mid, "framework": "llama_cpp", "model_path": f"/models/{mid}.gguf"}
    )


def running(mid: str) -> Handle:
    return Handle(mid, "llama_cpp", "old", 9000, (), 100, NOW - 60, pid=4242)


def executor(
    tmp_path: Path, unstoppable: Collection[str] = (), unstartable: Collection[str] = ()
) -> tuple[Executor, FakeEngine]:
    engine = FakeEngine(set(unstoppable), set(unstartable))
    records = Records(tmp_path, clock=lambda: NOW)
    supervisor = Supervisor(
        {"llama_cpp": engine},
        records,
        host="127.0.0.1",
        stop_grace_s=0,
        http=lambda: pytest.fail("no probe in a plan's execution"),
        jitter=lambda: 0.0,
    )
    return Executor(
        {"llama_cpp": engine}, records, supervisor, host="127.0.0.1", stop_grace_s=0
    ), engine


def act(kind: ActionKind, mid: str, port: int = 9000) -> Action:
    return Action(kind, mid, (), 0, port, f"because {mid}")


def events(tmp_path: Path) -> list[tuple[str, str | None]]:
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    return [(e["kind"], e["model"]) for e in map(json.loads, lines)]


def run(
    ex: Executor, actions: list[Action], models: list[str]
) -> tuple[list[str], dict[str, InstanceRecord]]:
    desired = DesiredState({m: spec(m) for m in models}, ClusterSpec())
    handles = {a.model: [running(a.model)] for a in actions if a.action != "start"}
    states: dict[str, InstanceRecord] = {}
    lines = ex.execute(Plan(None, True, actions=tuple(actions)), desired, handles, states, NOW)
    return lines, states


def test_a_failed_stop_keeps_that_models_start_from_running(tmp_path: Path) -> None:
    ex, engine = executor(tmp_path, unstoppable={"a"})
    lines, states = run(ex, [act("restart", "a"), act("start", "b", 9001)], ["a", "b"])
    assert engine.started == ["b"]  # a's engine may still hold its port: a is not started twice
    assert states["a"].status == Status.error
    assert "could not stop its engine" in (states["a"].last_error or "")
    assert states["b"].status == Status.starting
    assert lines == [
        "error a: could not stop its engine: OSError: error a: permission denied",
        "start b: because b",
    ]
    assert events(tmp_path) == [("error", "a"), ("start", "b")]


def test_a_restart_whose_stop_worked_starts_and_says_so_once(tmp_path: Path) -> None:
    ex, engine = executor(tmp_path)
    lines, states = run(ex, [act("restart", "a")], ["a"])
    assert (engine.stopped, engine.started) == (["a"], ["a"])
    assert states["a"].status == Status.starting
    assert lines == ["restart a: because a"]  # the stop half of a restart has no line of its own
    assert events(tmp_path) == [("restart", "a")]


def test_a_failed_start_is_that_models_error_and_the_rest_go_on(tmp_path: Path) -> None:
    ex, engine = executor(tmp_path, unstartable={"a"})
    lines, states = run(ex, [act("start", "a"), act("start", "b", 9001)], ["a", "b"])
    assert engine.started == ["b"]
    assert states["a"].status == Status.error
    assert lines == ["error a: error starting a: no such file", "start b: because b"]


def test_setting_aside_a_broken_spec_says_it_once(tmp_path: Path) -> None:
    ex, engine = executor(tmp_path)
    states: dict[str, InstanceRecord] = {}
    handles = {"a": [running("a")]}
    first = ex.set_aside({"a": "bad spec"}, handles, states, NOW)
    assert first == ["error a: bad spec"] and engine.stopped == ["a"]
    assert states["a"].status == Status.error
    again = ex.set_aside({"a": "bad spec"}, {"a": []}, states, NOW + 1)
    assert again == []
    assert events(tmp_path) == [("error", "a")]


def test_a_start_the_plan_gave_no_port_is_that_models_error_not_a_crash(tmp_path: Path) -> None:
    ex, engine = executor(tmp_path)
    unplaced = Action("start", "a", (), 0, None, "because a")
    lines, states = run(ex, [unplaced, act("start", "b", 9001)], ["a", "b"])
    assert engine.started == ["b"]
    assert states["a"].status == Status.error
    assert lines == ["error a: the plan gave it no port", "start b: because b"]

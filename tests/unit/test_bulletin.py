"""The loop's bulletin (loop/bulletin.py): what the API process reads of the last pass must come
back exactly as the daemon wrote it."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.desired import Problem
from reconciler.core.estimate import MemoryFigures
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.plan import Action, GpuUsage, Outcome, Plan, RemoteModel, Unschedulable
from reconciler.core.secrets import SecretUse
from reconciler.engines.base import Handle
from reconciler.loop.bulletin import (
    Bulletin,
    OutcomeDigest,
    PlanDigest,
    decode,
    digest,
    encode,
    publish,
)
from reconciler.state.statefile import State


def sample() -> Bulletin:
    handle = Handle(
        model_id="chat.1",
        framework="vllm",
        spec_hash="abc123",
        port=8101,
        gpus=(0, 3),
        memory_mb=20_000,
        started_at=1_790_000_000.5,
        pid=4242,
        create_time=1_790_000_000.25,
        log_path="/var/lib/reconciler/logs/chat.1.log",
    )
    record = InstanceRecord(
        id="chat.1",
        status=Status.running,
        pid=4242,
        port=8101,
        gpus=(0, 3),
        memory_mb=20_000,
        spec_hash="abc123",
        last_log_lines=("on", "1e3", "ready\u2028now"),
    )
    return Bulletin(
        run_id="run-1",
        pid=99,
        passes=7,
        last_pass_at=1_790_000_001.0,
        last_reasons=("commit 3d0c528c", "engine exited"),
        plan=plan(),
        memory={"chat.1": MemoryFigures(21_000, 19_500, 19_900, "nvml")},
        handles={"chat.1": (handle,)},
        state=State(revision="3d0c528c", models={"chat.1": record}),
    )


def plan() -> Plan:
    """A plan with every kind of field set, as the API serves it."""
    return Plan(
        revision="3d0c528c",
        valid=True,
        problems=(Problem("models/old.yaml", 3, "port", "deprecated", "warning"),),
        actions=(
            Action("preempt", "chat.1", (0, 3), 20_000, 8101, "preempted by big (priority 9)"),
            Action("start", "lazy", (1,), 1500, None, "on demand: a request waits for it"),
        ),
        unschedulable=(Unschedulable("huge", "needs 90000 MiB, 80000 free"),),
        gpus=(GpuUsage(0, 80_000, 20_000, 0), GpuUsage(1, 80_000, 0, 1500)),
        models={
            "chat.1": Outcome("chat.1", Status.preempted, reason="preempted by big"),
            "lazy": Outcome("lazy", Status.running, (1,), 1500, 8102, 5, "h1", demand="wanted"),
        },
        secrets=(SecretUse("RECONCILER_SECRET_HOOK", "https://hooks.example", "webhook"),),
        remote=(RemoteModel("cloud", "api.example.com", serves_for=("huge",)),),
    )


def test_the_models_read_their_reason_and_demand_from_the_plan() -> None:
    assert digest(decode(encode(sample())).plan or plan()) == PlanDigest(
        valid=True,
        summary="1 to start, 1 preempted, 1 unschedulable",
        models={
            "chat.1": OutcomeDigest("preempted by big", None),
            "lazy": OutcomeDigest(None, "wanted"),
        },
    )


def test_a_bulletin_reads_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "loop.json"
    publish(path, sample())
    assert decode(path.read_bytes()) == sample()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_an_empty_loop_reads_back_too() -> None:
    empty = Bulletin(run_id="r", pid=1)
    assert decode(encode(empty)) == empty


@pytest.mark.parametrize("data", [b"", b"[]", b'{"run_id": "r"}', b"{not json"])
def test_what_is_not_a_bulletin_is_refused(data: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode(data)

"""The loop's bulletin (loop/bulletin.py): what the API process reads of the last pass must come
back exactly as the daemon wrote it."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.memory import MemoryFigures
from reconciler.core.observed import Status
from reconciler.engines.base import Handle
from reconciler.loop.bulletin import Bulletin, OutcomeDigest, PlanDigest, decode, encode, publish
from reconciler.state.statefile import ModelState, State


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
    record = ModelState(
        id="chat.1",
        status=Status.running,
        pid=4242,
        port=8101,
        gpus=[0, 3],
        memory_mb=20_000,
        spec_hash="abc123",
        last_log_lines=["on", "1e3", "ready\u2028now"],
    )
    return Bulletin(
        run_id="run-1",
        pid=99,
        passes=7,
        last_pass_at=1_790_000_001.0,
        last_reasons=("commit 3d0c528c", "engine exited"),
        plan=PlanDigest(
            valid=True,
            summary="1 to start",
            models={
                "chat.1": OutcomeDigest("preempted by big", None),
                "lazy": OutcomeDigest(None, "idle"),
            },
        ),
        memory={"chat.1": MemoryFigures(21_000, 19_500, 19_900, "nvml")},
        handles={"chat.1": (handle,)},
        state=State(revision="3d0c528c", models={"chat.1": record}),
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

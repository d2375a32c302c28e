"""Liveness probes between passes: the daemon skips a pass only when no probe result needs
recording. A probe result is read by its typed fields (ended or not, ok or not), never by its
truthiness: a failed probe that ended unjudged is news, not nothing."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import Handle
from reconciler.engines.prober import probe_client
from reconciler.loop.records import Records
from reconciler.loop.supervision import Supervisor, owner

NOW = 1_000.0
INTERVAL = 10.0


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound on loopback but not listening: a probe of it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


class Unused:
    """An engine nothing is asked of but where it answers: the spec's health path."""

    framework = "llama_cpp"

    def health_path(self, spec: ModelSpec) -> str:
        return spec.health_check.path


def spec() -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": "m",
            "framework": "llama_cpp",
            "model_path": "/models/m.gguf",
            "health_check": {"interval_s": INTERVAL, "timeout_s": 5},
        }
    )


def test_a_failed_probe_that_ended_unjudged_asks_for_a_pass(
    tmp_path: Path, refused_port: int
) -> None:
    client = probe_client()
    supervisor = Supervisor(
        {"llama_cpp": Unused()},  # type: ignore[dict-item]  # only its framework is read
        Records(tmp_path, clock=lambda: NOW),
        host="127.0.0.1",
        stop_grace_s=0,
        http=lambda: client,
        jitter=lambda: 0.0,
    )
    handle = Handle("m", "llama_cpp", "h", refused_port, (), 100, NOW - 60, container_id="c1")
    url = f"http://127.0.0.1:{refused_port}/health"
    # a probe that ended after its caller stopped waiting: its failed result waits to be taken
    assert supervisor.prober.start("m", owner(handle), url, 5.0, client)
    supervisor.prober.wait(["m"], None)
    ended = supervisor.prober.result("m", owner(handle))
    assert ended is not None and not ended.ok
    supervisor.last_probe["m"] = (NOW - INTERVAL, INTERVAL)
    desired = DesiredState({"m": spec()}, ClusterSpec())
    states = {"m": InstanceRecord(id="m", status=Status.running)}
    try:
        skip_pass = supervisor.probe_due(desired, {"m": [handle]}, states, NOW)
    finally:
        client.close()
    assert not skip_pass  # a pass takes the failed result and counts it

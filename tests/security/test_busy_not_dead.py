"""Busy is not dead, silent is: the daemon's health checks against what its gateway sees.

A real `reconciler run` with its gateway; the engine is tests/fakes/fake_busy.py, a single-slot
stand-in whose health route waits while it streams an answer (llama-cpp-python's server does
the same on /v1/models), with probes every 2 s that give up after 2 s, two failures in a row.
- It streams a long answer through the gateway: every probe meanwhile times out, but the engine
  is sending bytes to a client, so it is busy, not dead: the answer completes, nothing restarts.
- It holds a request and sends nothing: its probes time out and no bytes flow, so it is dead
  however many requests it holds: it is restarted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apply_support import REPO, Host, managed_host, stand_in, vllm_wrapper, wait_for
from daemon_support import Daemon, free_port, init_repo

FAKE_BUSY = REPO / "tests" / "fakes" / "fake_busy.py"
PROBES = {"interval_s": 2, "timeout_s": 2, "failure_threshold": 2, "startup_timeout_s": 60}
TOKENS = 1000
TOKEN_S = 0.02
"""1000 events 0.02 s apart: a 20 s answer (longer on a busy machine), during which the old
health logic counted two failed probes within about 8 s; a gap of up to 4 s between events (a
busy machine) still counts as recent"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path / "site") as host:
        host.env["RECONCILER_VLLM"] = str(vllm_wrapper(host.root / "busy-bin", FAKE_BUSY))
        yield host


def start(host: Host, **env: str) -> Daemon:
    host.write_model(
        stand_in("busy", health_check=PROBES, env={"FAKE_BUSY_TOKEN_S": str(TOKEN_S), **env})
    )
    init_repo(host)
    daemon = Daemon(host, free_port(), None, None, extra_args=("--resync", "3600"))
    daemon.start()
    daemon.wait_statuses({"busy": "running"})
    return daemon


def stream(daemon: Daemon, timeout_s: float) -> tuple[int, str | None]:
    """Events received and the last finish reason (None: the stream ended without one)."""
    body = {"model": "busy", "messages": [{"role": "user", "content": "go"}], "stream": True}
    body["max_tokens"] = TOKENS
    events, finish = 0, None
    url = f"{daemon.gateway_url}/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=timeout_s) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                data = json.loads(line[len("data: ") :])
                if "error" in data:
                    return events, None
                events += 1
                finish = data["choices"][0].get("finish_reason") or finish
    return events, finish


def test_an_engine_streaming_an_answer_is_busy_not_dead(host: Host) -> None:
    daemon = start(host)
    try:
        pid = host.pid("busy")
        seen = len(host.events())
        began = time.monotonic()
        assert stream(daemon, timeout_s=300) == (TOKENS, "length")
        took = time.monotonic() - began
        print(f"{TOKENS} events in {took:.1f} s; every probe meanwhile waited for the slot")
        assert took > 3 * (PROBES["interval_s"] + PROBES["timeout_s"]), "too short to tell"
        assert host.pid("busy") == pid, "the engine was restarted mid-answer"
        assert [e["kind"] for e in host.events()[seen:] if e["kind"] == "crashed"] == []
        assert daemon.statuses() == {"busy": "running"}
    finally:
        daemon.stop()


def test_an_engine_that_holds_a_request_in_silence_is_restarted(host: Host) -> None:
    daemon = start(host, FAKE_BUSY_STALL_AFTER="5")
    try:
        pid = host.pid("busy")
        events, finish = stream(daemon, timeout_s=120)
        assert (events, finish) == (5, None), "the stream should end with the engine's restart"
        assert wait_for(lambda: host.events("crashed", "busy"), 60, 0.2), daemon.log()
        (crash,) = host.events("crashed", "busy")
        assert "unhealthy: 2 failed health checks in a row" in crash["message"], crash
        daemon.wait_statuses({"busy": "running"}, timeout_s=60)
        assert host.pid("busy") != pid
    finally:
        daemon.stop()

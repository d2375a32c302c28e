"""A rogue engine in front of the real gateway process (issue 18: "one rogue engine reply freezes
the gateway"; "no back-pressure"; "no read timeout on the engine side").

Any spec author can run an engine that answers anything (a Docker image). Before the fix, a
`Content-Length: -1` or a chunk size of `-6` made the gateway loop forever (95 % CPU, memory
growing, every model and /metrics timing out, SIGTERM ignored), ten clients that never read
took it from 57 MB to 1.3 GB, and an engine that never answered held its clients forever.
The rogue is tests/fakes/fake_rogue.py (FAKE_ROGUE_ANSWER); the good engine and the endless
stream are tests/bench/gateway_upstream.py.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from daemon_support import free_port
from gateway_support import REPO, UPSTREAM, Harness, Upstream, harness, model

ROGUE = REPO / "tests" / "fakes" / "fake_rogue.py"
ANSWER_WITHIN_S = 30.0
"""a hung gateway never answers; a working one answers in milliseconds (generous: busy host)"""


@pytest.fixture
def gw(tmp_path: Path):
    with harness(tmp_path) as h:
        yield h


def rogue(gw: Harness, answer: str) -> Upstream:
    port = free_port()
    argv = [sys.executable, str(ROGUE), "serve", "rogue", "--host", "127.0.0.1"]
    env = {"FAKE_ROGUE_ANSWER": answer}
    return gw.upstream(Upstream([*argv, "--port", str(port)], port, env=env))


def chat(gw: Harness, name: str, stream: bool = False) -> httpx.Response:
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(f"{gw.base}/v1/chat/completions", json=body, timeout=ANSWER_WITHIN_S + 30)


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        time.sleep(0.1)


def gateway_cpu_percent(gw: Harness, seconds: float = 2.0) -> float:
    assert gw.service.process is not None
    process = psutil.Process(gw.service.process.pid)
    before = process.cpu_times()
    time.sleep(seconds)
    after = process.cpu_times()
    return 100 * (after.user + after.system - before.user - before.system) / seconds


@pytest.mark.parametrize("answer", ["negative-length", "negative-chunk"])
def test_a_malformed_answer_is_a_quick_error_and_the_gateway_keeps_serving(
    gw: Harness, answer: str
) -> None:
    bad, good = rogue(gw, answer), gw.upstream(Upstream.fast(name="good"))
    gw.write(model("rogue", bad.url), model("good", good.url))
    for _ in range(5):
        started = time.monotonic()
        refused = chat(gw, "rogue")
        assert time.monotonic() - started < ANSWER_WITHIN_S
        assert refused.status_code in (502, 503), refused.text
        error = refused.json()["error"]
        assert error["code"] == "upstream_unavailable"
        assert ("Content-Length" if answer == "negative-length" else "chunk size") in error[
            "message"
        ]
    # the rogue's connections are dropped, never kept for the next request
    wait_for(lambda: bad.stats()["dropped"] == bad.stats()["posts"] == 5, "connections dropped")
    # a stream whose first chunk is malformed is refused before the client's head, not a hang
    if answer == "negative-chunk":
        streamed = chat(gw, "rogue", stream=True)
        assert streamed.status_code in (502, 503), streamed.text
        assert "chunk size" in streamed.json()["error"]["message"]
    # nothing spins: other models, /metrics and the CPU say so
    assert chat(gw, "good").json()["model"] == "good"
    assert "reconciler_gateway_requests_total" in httpx.get(f"{gw.base}/metrics", timeout=10).text
    assert gateway_cpu_percent(gw) < 50
    # and SIGTERM stops it (before, only SIGKILL did)
    process = gw.service.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) is not None


def test_a_stream_whose_first_chunk_is_malformed_fails_over_to_a_good_instance(
    gw: Harness,
) -> None:
    """The first chunk is read before the client gets a head, so a rogue instance's bad stream
    is a failover (the client sees only the good instance's stream), not a 200 that breaks."""
    bad, good = rogue(gw, "negative-chunk"), gw.upstream(Upstream.fast(name="good"))
    gw.write(model("good", bad.url, good.url))
    for _ in range(4):  # whichever instance is picked first, every stream comes back whole
        streamed = chat(gw, "good", stream=True)
        assert streamed.status_code == 200, streamed.text
        assert "upstream_failed" not in streamed.text
        assert streamed.text.rstrip().endswith("data: [DONE]"), streamed.text[-200:]
    assert bad.stats()["posts"] >= 1  # the rogue was tried


def test_an_engine_that_never_answers_fails_after_the_idle_timeout(gw: Harness) -> None:
    silent = rogue(gw, "silent")
    gw.write(model("rogue", silent.url), upstream_idle_timeout_s=1.0)
    refused = chat(gw, "rogue")
    assert refused.status_code in (502, 503)
    assert "no byte from the engine in 1 s" in refused.json()["error"]["message"]
    wait_for(lambda: silent.stats()["dropped"] == 1, "the silent engine's connection dropped")


def test_a_stream_that_stalls_ends_with_an_error_event_after_the_idle_timeout(
    gw: Harness,
) -> None:
    stalling = rogue(gw, "stall")
    gw.write(model("rogue", stalling.url), upstream_idle_timeout_s=1.0)
    with httpx.stream(
        "POST",
        f"{gw.base}/v1/chat/completions",
        json={"model": "rogue", "messages": [], "stream": True},
        timeout=ANSWER_WITHIN_S + 30,
    ) as streamed:
        events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[0][6:]) == {"choices": []}
    error = json.loads(events[-1][6:])["error"]
    assert error["code"] == "upstream_failed" and "no byte from the engine" in error["message"]
    wait_for(lambda: stalling.stats()["dropped"] == 1, "the stalled engine's connection dropped")


STREAM_BYTES = 64 * 1024 * 1024
CLIENTS = 10


def test_clients_that_never_read_hold_a_bounded_amount_of_gateway_memory(gw: Harness) -> None:
    """Ten streaming clients that never read, against an engine that streams 64 MiB each as
    fast as it is read: the gateway stops reading from the engine, so neither its memory nor
    what the engine managed to send grows with the stream (before: 57 MB to 1.3 GB in 12 s)."""
    port = free_port()
    argv = [sys.executable, str(UPSTREAM), "--port", str(port), "--name", "big"]
    big = gw.upstream(Upstream([*argv, "--stream-bytes", str(STREAM_BYTES)], port))
    gw.write(model("big", big.url))
    assert gw.service.process is not None
    gateway = psutil.Process(gw.service.process.pid)
    rss_before = gateway.memory_info().rss
    body = json.dumps({"model": "big", "messages": [], "stream": True}).encode()
    address = gw.base.removeprefix("http://")
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    host, port = address.rsplit(":", 1)
    clients = []
    try:
        for _ in range(CLIENTS):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.connect((host, int(port)))
            client.sendall(request)
            clients.append(client)
        for client in clients:  # the status line, then never another byte
            assert client.recv(12, socket.MSG_WAITALL) == b"HTTP/1.1 200"
        # wait until the engine cannot send more: what it sent stops growing
        last, steady_since = -1, time.monotonic()
        deadline = time.monotonic() + 120
        while time.monotonic() - steady_since < 3 and time.monotonic() < deadline:
            sent = big.stats()["bytes_streamed"]
            if sent != last:
                last, steady_since = sent, time.monotonic()
            time.sleep(0.2)
        growth = gateway.memory_info().rss - rss_before
        assert last < CLIENTS * STREAM_BYTES / 2, f"the engine sent {last} bytes"
        assert growth < 64 * 1024 * 1024, f"the gateway grew by {growth / 2**20:.0f} MiB"
        # meanwhile the gateway serves others
        assert "reconciler_gateway" in httpx.get(f"{gw.base}/metrics", timeout=10).text
    finally:
        for client in clients:
            client.close()
    # clients that leave cut their streams at the engine
    wait_for(lambda: big.stats()["streams_cut"] == CLIENTS, "streams cut at the engine")

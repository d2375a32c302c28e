"""VllmEngine through its real code path, with tests/fakes/fake_vllm.py as the `vllm` executable.

vLLM needs a CUDA GPU, so the stand-in checks the argv shape `vllm serve` accepts and reports
the argv and environment it was given; the assertions are on exactly what vLLM would get.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from reconciler.core.spec import ModelSpec
from reconciler.engines.base import (
    MARKER_GPUS,
    MARKER_MODEL,
    Command,
    EngineError,
    EnginePlacement,
    Handle,
)
from reconciler.engines.detached import ProcessSupervisor
from reconciler.engines.identity import MARKER_FRAMEWORK
from reconciler.engines.prober import wait_ready
from reconciler.engines.vllm import VllmEngine

FAKE_VLLM = Path(__file__).resolve().parents[1] / "fakes" / "fake_vllm.py"


def write_wrapper(directory: Path) -> Path:
    """An executable named `vllm` that runs the stand-in with this interpreter."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "vllm"
    run = f"runpy.run_path({str(FAKE_VLLM)!r}, run_name='__main__')"
    wrapper.write_text(f"#!{sys.executable}\nimport runpy\n{run}\n")
    wrapper.chmod(0o755)
    return wrapper


def qwen(**fields: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": "qwen2-7b",
            "framework": "vllm",
            "model_path": "Qwen/Qwen2-7B-Instruct",
            "parameters": {
                "max-model-len": 8192,
                "gpu-memory-utilization": 0.9,
                "enforce-eager": True,
                "enable-prefix-caching": False,
                "served-model-name": ["qwen", "qwen2"],
            },
            "resource_requirements": {"gpu_count": 2, "gpu_memory_mb": 20000},
            "env": {"HF_HUB_OFFLINE": "1"},
            **fields,
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reported(log_lines: list[str]) -> dict:
    """The stand-in's first JSON line: what it was given."""
    for line in log_lines:
        if line.startswith('{"fake_vllm"'):
            return json.loads(line)["fake_vllm"]
    raise AssertionError(f"no report in {log_lines}")


def wait_dead(
    engine: VllmEngine, timeout: float = 10.0, with_exit_code: bool = False
) -> list[Handle]:
    """The engines that exited; with_exit_code: once their exit status is collected too (a
    process can look gone a moment before the kernel hands its status to the parent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [h for h in engine.observe() if not h.alive]
        if dead and (not with_exit_code or all(h.exit_code is not None for h in dead)):
            return dead
        time.sleep(0.05)
    raise AssertionError("the engine did not exit")


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    supervisor = ProcessSupervisor(tmp_path)
    for handle in supervisor.observe():
        supervisor.stop(handle, grace_s=1)


@pytest.fixture
def vllm_on_path(tmp_path: Path, monkeypatch) -> Path:
    wrapper = write_wrapper(tmp_path / "bin")
    monkeypatch.setenv("RECONCILER_VLLM", str(wrapper))
    return wrapper


def test_vllm_gets_exactly_its_argv_and_gpus(state_dir: Path, vllm_on_path: Path) -> None:
    engine = VllmEngine(state_dir)
    spec = qwen()
    where = EnginePlacement(gpus=(2, 3), port=free_port(), memory_mb=20000)
    handle = engine.start(spec, where)
    base = f"http://127.0.0.1:{where.port}"
    assert wait_ready(base + engine.health_path(spec), timeout=20).ok, engine.logs(handle)

    given = reported(engine.logs(handle, 50))
    assert given["argv"] == [
        "serve",
        "Qwen/Qwen2-7B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        str(where.port),
        "--tensor-parallel-size",
        "2",
        "--no-enable-prefix-caching",
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.9",
        "--max-model-len",
        "8192",
        "--served-model-name",
        "qwen",
        "qwen2",
    ]
    assert given["argv"] == list(engine.command(spec, where).argv[1:])
    assert given["env"]["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert given["env"][MARKER_GPUS] == "2,3"
    assert given["env"][MARKER_MODEL] == "qwen2-7b"
    assert given["env"][MARKER_FRAMEWORK] == "vllm"
    assert psutil.Process(handle.pid).environ()["HF_HUB_OFFLINE"] == "1"

    models = httpx.get(base + "/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["qwen", "qwen2"]
    answer = httpx.post(
        base + "/v1/completions",
        json={"model": "qwen", "prompt": "The capital of France is", "max_tokens": 8},
        timeout=5,
    ).json()
    assert answer["choices"][0]["text"].strip()

    (found,) = VllmEngine(state_dir).observe()
    assert (found.pid, found.create_time, found.gpus, found.memory_mb) == (
        handle.pid,
        handle.create_time,
        (2, 3),
        20000,
    )
    engine.stop(found, grace_s=5)
    assert handle.pid is not None and not psutil.pid_exists(handle.pid)
    assert engine.logs(handle)[-1] == "INFO: fake vLLM stopped"  # it got SIGTERM, not SIGKILL
    assert engine.observe() == []


def test_a_flag_vllm_rejects_is_reported_as_a_crash(state_dir: Path, vllm_on_path: Path) -> None:
    class Misspelt(VllmEngine):
        def command(self, spec: ModelSpec, placement: EnginePlacement) -> Command:
            command = super().command(spec, placement)
            return Command(argv=(*command.argv, "--max-model-length", "1"), env=command.env)

    engine = Misspelt(state_dir)
    engine.start(qwen(), EnginePlacement(gpus=(0,), port=free_port()))
    (dead,) = wait_dead(engine, with_exit_code=True)
    assert dead.exit_code == 2  # argparse: unrecognized arguments
    assert any("unrecognized arguments" in line for line in engine.logs(dead))


def test_missing_vllm_is_a_permanent_error(state_dir: Path, monkeypatch) -> None:
    monkeypatch.delenv("RECONCILER_VLLM", raising=False)
    monkeypatch.setenv("PATH", str(state_dir / "empty"))
    with pytest.raises(EngineError, match="vllm is not installed"):
        VllmEngine(state_dir).start(qwen(), EnginePlacement(gpus=(0,), port=free_port()))
    monkeypatch.setenv("RECONCILER_VLLM", str(state_dir / "nowhere" / "vllm"))
    with pytest.raises(EngineError, match="vllm is not installed"):
        VllmEngine(state_dir).start(qwen(), EnginePlacement(gpus=(0,), port=free_port()))


def test_missing_local_model_is_a_permanent_error(state_dir: Path, vllm_on_path: Path) -> None:
    spec = qwen(model_path=str(state_dir / "no-such-model"))
    with pytest.raises(EngineError, match="model path not found"):
        VllmEngine(state_dir).start(spec, EnginePlacement(gpus=(0,), port=free_port()))

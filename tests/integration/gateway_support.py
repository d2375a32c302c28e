"""The gateway process in front of real upstream processes, for tests/integration/test_gateway*.

Upstreams: tests/bench/gateway_upstream.py (fast, OpenAI-shaped, streams with a chosen delay)
and the vLLM stand-in tests/fakes/fake_vllm.py. The table is written the way the daemon writes
it (routes.write_routes), and each write waits until the gateway reports that generation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
from daemon_support import free_port

from reconciler.gateway.routes import GatewaySettings, RouteInstance, RouteModel, Routes
from reconciler.gateway.routes import write_routes as write_routes_file
from reconciler.gateway.service import GatewayService

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = REPO / "tests" / "bench" / "gateway_upstream.py"
FAKE_VLLM = REPO / "tests" / "fakes" / "fake_vllm.py"
KEY_ENV = "RECONCILER_TEST_GATEWAY_KEY"
KEY = "sk-test-0123456789abcdefghijklmnopqrstuv"  # 32+ characters: shorter keys are refused


class Upstream:
    """One engine-like process on a free loopback port."""

    def __init__(
        self,
        argv: list[str],
        port: int,
        health: str = "/health",
        timeout_s: float = 30,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}{health}", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                assert self.process.poll() is None, f"upstream exited: {argv}"
                time.sleep(0.05)
        raise AssertionError(f"upstream did not answer: {argv}")

    @classmethod
    def fast(cls, name: str = "bench-model", chunks: int = 8, delay_ms: float = 0) -> Upstream:
        port = free_port()
        argv = [sys.executable, str(UPSTREAM), "--port", str(port), "--name", name]
        argv += ["--chunks", str(chunks), "--chunk-delay-ms", str(delay_ms)]
        return cls(argv, port)

    @classmethod
    def vllm(cls, model: str, served_name: str | None = None, **knobs: str) -> Upstream:
        """The vLLM stand-in serving `model` (as `served_name` when given); `knobs` are its
        FAKE_VLLM_* settings without the prefix (ANSWER_STATUS="502", STREAM_GATE=path)."""
        port = free_port()
        argv = [sys.executable, str(FAKE_VLLM), "serve", model, "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--tensor-parallel-size", "1"]
        if served_name is not None:
            argv += ["--served-model-name", served_name]
        return cls(argv, port, env={f"FAKE_VLLM_{k}": v for k, v in knobs.items()})

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/stats", timeout=5).json()

    def standin_stats(self) -> dict:
        """The vLLM stand-in's record: {"answered": {status: count}, "models": [...]}."""
        return httpx.get(f"{self.url}/stand-in/stats", timeout=5).json()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def model(
    model_id: str, *urls: str, status: str = "running", draining: tuple[str, ...] = (), **fields
) -> RouteModel:
    instances = tuple(RouteInstance(u, draining=u in draining) for u in urls)
    return RouteModel(id=model_id, status=status, instances=instances, **fields)


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.routes_path = tmp_path / "routes.json"
        self.generation = 0
        self.upstreams: list[Upstream] = []
        self.service = GatewayService(
            f"127.0.0.1:{free_port()}",
            self.routes_path,
            log_path=tmp_path / "gateway.log",
            env={**os.environ, KEY_ENV: KEY},
            poll_interval_s=0.05,
        )
        self.service.start()

    @property
    def base(self) -> str:
        return self.service.base

    def upstream(self, upstream: Upstream) -> Upstream:
        self.upstreams.append(upstream)
        return upstream

    def write(self, *models: RouteModel, **settings: object) -> int:
        self.generation += 1
        routes = Routes({m.id: m for m in models}, GatewaySettings(**settings), self.generation)
        write_routes_file(self.routes_path, routes)
        deadline = time.monotonic() + 5
        while self.service.inflight()["generation"] < self.generation:
            assert time.monotonic() < deadline, "the gateway did not load the new table"
            time.sleep(0.02)
        return self.generation

    def client(self, **options: object) -> openai.OpenAI:
        options.setdefault("api_key", "unused")
        return openai.OpenAI(base_url=self.service.url, max_retries=0, **options)

    def post(self, path: str, body: bytes | dict, **headers: str) -> httpx.Response:
        kwargs = {"json": body} if isinstance(body, dict) else {"content": body}
        return httpx.post(f"{self.base}{path}", headers=headers, timeout=30, **kwargs)

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=5).text

    def close(self) -> None:
        self.service.stop()
        for upstream in self.upstreams:
            upstream.kill()


@contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()

"""The gateway as Kubernetes runs it: the rendered routes.json (its Services pointed at local
stand-in engines) and the rendered container's arguments and key variables, in a real
`python -m reconciler.gateway` process. It routes by id and alias to the addresses a Service
name resolves to, and falls back when a model's Service resolves to nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from daemon_support import free_port
from gateway_support import Upstream

from reconciler import kubernetes as k8s
from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState
from reconciler.core.spec import ModelSpec
from reconciler.gateway.cluster_routes import routes_file

REPO = Path(__file__).resolve().parents[2]
KEY_ENV = "RECONCILER_SECRET_GATEWAY_KEY"
KEY = "sk-discovery-0123456789abcdefghijklmnop"


def spec(model_id: str, **fields: Any) -> ModelSpec:
    base = {
        "id": model_id,
        "framework": "llama_cpp",
        "model_path": f"/models/{model_id}.gguf",
        "resource_requirements": {"gpu_count": 1, "gpu_memory_mb": 4000},
    }
    return ModelSpec.model_validate({**base, **fields})


def rendered_gateway() -> list[dict[str, Any]]:
    cluster = ClusterSpec.model_validate(
        {"gateway": {"api_keys": [{"name": "ops", "key_env": KEY_ENV}]}}
    )
    specs = [spec("small", aliases=["tiny"]), spec("big", fallback="small")]
    desired = DesiredState({s.id: s for s in specs}, cluster, None)
    rendered = k8s.render(desired, namespace="llm", routes_file=routes_file)
    assert rendered.problems == []
    return list(yaml.safe_load_all(rendered.files[k8s.GATEWAY_FILE]))


class Gateway:
    """The rendered container's process, listening on loopback instead of 0.0.0.0."""

    def __init__(self, routes: Path, container: dict[str, Any], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = list(container["args"])
        args[args.index("--routes") + 1] = str(routes)
        args[args.index("--listen") + 1] = f"127.0.0.1:{self.port}"
        # each key variable the pod reads from the operator's Secret
        env = {e["name"]: KEY for e in container["env"]}
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reconciler.gateway", *args],
                cwd=REPO,
                env={**os.environ, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, log.read_text()
            try:
                httpx.get(f"{self.base}/v1/models", timeout=1, headers=self.headers())
                return
            except httpx.HTTPError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)

    @staticmethod
    def headers() -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY}"}

    def chat(self, model: str) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        return httpx.post(
            f"{self.base}/v1/chat/completions", json=body, headers=self.headers(), timeout=30
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def engine() -> Iterator[Upstream]:
    upstream = Upstream.fast(name="small")
    try:
        yield upstream
    finally:
        upstream.kill()


def test_the_rendered_gateway_routes_by_id_and_alias_and_falls_back(
    tmp_path: Path, engine: Upstream
) -> None:
    docs = rendered_gateway()
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    table = json.loads(config_map["data"]["routes.json"])
    # the cluster's names, pointed at this machine: small's Service resolves to the stand-in;
    # big's to nothing (no ready pod), so its fallback answers
    assert table["models"]["small"]["service"]["name"] == "small-pods.llm.svc.cluster.local"
    table["models"]["small"]["service"] = {"name": "localhost", "port": engine.port}
    table["models"]["big"]["service"] = {"name": "nonexistent.invalid", "port": engine.port}
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps(table))
    gateway = Gateway(routes, container, tmp_path / "gateway.log")
    try:
        before = engine.stats()["requests"]
        for name in ("small", "tiny"):
            answer = gateway.chat(name)
            assert answer.status_code == 200, answer.text
            assert answer.headers["X-Reconciler-Model"] == "small"
            assert answer.headers["X-Reconciler-Instance"] == "small/127.0.0.1"
        answer = gateway.chat("big")
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Reconciler-Model"] == "small"  # big's fallback answered
        # every answer came from the engine (its stats count each request, this one too)
        assert engine.stats()["requests"] == before + 3 + 1
        listed = httpx.get(f"{gateway.base}/v1/models", headers=gateway.headers(), timeout=5)
        status = {m["id"]: m["status"] for m in listed.json()["data"]}
        assert status == {"small": "running", "tiny": "running", "big": "error"}
        # the kubelet's probes, as rendered (no key: they cannot carry one)
        for probe in ("readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            assert httpx.get(f"{gateway.base}{path}", timeout=5).status_code == 200
        # without the key (the pod reads it from the operator's Secret) nothing is served
        refused = httpx.post(
            f"{gateway.base}/v1/chat/completions",
            json={"model": "small", "messages": []},
            timeout=10,
        )
        assert refused.status_code == 401
    finally:
        gateway.stop()


def test_a_model_whose_pods_go_away_falls_back_then_returns(
    tmp_path: Path, engine: Upstream
) -> None:
    """The table follows the Service's addresses: a rewritten routes file (what the kubelet
    does when the ConfigMap changes) is reloaded, and resolution follows it."""
    docs = rendered_gateway()
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    table = json.loads(config_map["data"]["routes.json"])
    table["models"]["small"]["service"] = {"name": "localhost", "port": engine.port}
    table["models"]["big"]["service"] = {"name": "localhost", "port": engine.port}
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps(table))
    gateway = Gateway(routes, container, tmp_path / "gateway.log")
    try:
        answer = gateway.chat("big")
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Reconciler-Model"] == "big"
        table["models"]["big"]["service"] = {"name": "nonexistent.invalid", "port": engine.port}
        routes.write_text(json.dumps(table))
        deadline = time.monotonic() + 60
        while gateway.chat("big").headers.get("X-Reconciler-Model") != "small":
            assert time.monotonic() < deadline, gateway.log.read_text()
            time.sleep(0.2)
    finally:
        gateway.stop()

"""A remote model's status is its endpoint's health, as a real `reconciler run` probes it.

The endpoint is tests/fakes/hosted_endpoint.py (HTTPS on loopback, a certificate from a CA the test
makes with trustme, which the host trusts through RECONCILER_REMOTE_CA_FILE; it wants the key as
`Authorization: Bearer` and records every request's headers). What an operator sees through the
API, the metrics and the event log: `running` while the endpoint answers, `error` with the reason
once it is gone (its local fallback then runs), `running` again when it is back (the fallback
stops); a key the host does not bind to the endpoint's host never leaves it (the status says
why); an endpoint that accepts a connection and never answers holds up no other model's change;
a certificate that does not name the endpoint's host makes it an error (TLS is verified).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from apply_support import managed_host, stand_in, wait_for
from components import require_module
from daemon_support import Daemon, commit, free_port, init_repo
from gitops_support import spec_hash
from hosted_support import Tls, make_tls

trustme = require_module("trustme", "pip install -e '.[dev]'", module_level=True)

REPO = Path(__file__).resolve().parents[2]
HOSTED = REPO / "tests" / "fakes" / "hosted_endpoint.py"
KEY = "sk-bound-0123456789"
UNBOUND_KEY = "sk-unbound-9876543210"
APPLIED_WITHIN_S = 20.0
"""generous for a busy machine: a pass takes well under a second; the hung endpoint's probe
would wait an hour"""


class Endpoint:
    """hosted_endpoint.py on a loopback port that stays its own across stops and starts."""

    def __init__(self, tls: Tls) -> None:
        self.tls = tls
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        argv = [sys.executable, str(HOSTED), "--port", str(self.port), "--name", "hosted"]
        argv += ["--cert", str(self.tls.cert), "--key", str(self.tls.key), "--api-key", KEY]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        assert wait_for(self._answers, 30, 0.1), "the stand-in endpoint did not start"

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "it exited"
        try:
            httpx.get(f"{self.url}/models", verify=self.tls.context(), timeout=2)
        except httpx.HTTPError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def authorizations(self) -> list[str]:
        url = f"https://127.0.0.1:{self.port}/stand-in/stats"
        requests = httpx.get(url, verify=self.tls.context(), timeout=5).json()["requests"]
        return [str(r["authorization"]) for r in requests]


class Silent:
    """Accepts connections and never answers: a hosted API that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def remote(model_id: str, endpoint: str, **fields: Any) -> dict[str, Any]:
    """A remote model probed every second (the default is every 30 s)."""
    spec: dict[str, Any] = {
        "id": model_id,
        "framework": "remote",
        "endpoint": endpoint,
        "upstream_model": "gpt-upstream",
        "api_key_env": "RECONCILER_SECRET_CLOUD",
        "health_check": {"path": "/models", "interval_s": 1, "timeout_s": 5},
    }
    return {**spec, **fields}


@dataclass
class World:
    daemon: Daemon
    endpoint: Endpoint
    silent: Silent
    local: dict[str, Any]

    def model(self, model_id: str) -> dict[str, Any]:
        return dict(self.daemon.json(f"/api/v1/models/{model_id}"))

    def shows(self, model_id: str, status: str) -> bool:
        """reconciler_model_status says so, soon (the scrape may serve a value a moment old)."""
        line = f'reconciler_model_status{{model="{model_id}",status="{status}"}} 1.0'
        return bool(wait_for(lambda: line in self.daemon.get("/metrics").text, 15, 0.2))

    def events(self, model_id: str) -> list[tuple[str, str]]:
        found = self.daemon.json(f"/api/v1/events?model={model_id}&limit=200")
        events = found["events"] if isinstance(found, dict) else found
        return [(e["kind"], e["message"]) for e in events if e.get("model") == model_id]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("remote-status")
    tls = make_tls(root)
    endpoint = Endpoint(tls)
    endpoint.start()
    silent = Silent()
    local = stand_in("local")
    try:
        with managed_host(root / "host") as host:
            host.write_cluster([{"index": 0, "memory_mb": 8000}])
            host.env.update(
                {
                    "RECONCILER_REMOTE_CA_FILE": str(tls.ca),
                    "RECONCILER_SECRET_CLOUD": KEY,
                    "RECONCILER_SECRET_CLOUD_HOSTS": "127.0.0.1",
                    "RECONCILER_SECRET_UNBOUND": UNBOUND_KEY,  # bound to no host
                }
            )
            hung = {"path": "/models", "interval_s": 1, "timeout_s": 3600}
            for spec in (
                remote("cloud", endpoint.url, fallback="standby"),
                stand_in("standby", enabled=False, priority=2),  # runs only for cloud
                remote("unbound", endpoint.url, api_key_env="RECONCILER_SECRET_UNBOUND"),
                remote("hung", f"http://127.0.0.1:{silent.port}/v1", health_check=hung),
                # the certificate names 127.0.0.1, not localhost: it must not verify
                remote("misnamed", f"https://localhost:{endpoint.port}/v1", api_key_env=None),
                local,
            ):
                host.write_model(spec)
            init_repo(host)
            daemon = Daemon(host, free_port(), None, None, extra_args=("--resync", "3600"))
            try:
                daemon.start()
                daemon.wait_statuses({"cloud": "running", "local": "running"}, timeout_s=60)
                yield World(daemon, endpoint, silent, local)
            finally:
                daemon.stop()
    finally:
        endpoint.stop()
        silent.close()


def test_the_status_follows_the_endpoint_down_and_up_again(world: World) -> None:
    cloud = world.model("cloud")
    assert (cloud["framework"], cloud["endpoint"]) == ("remote", "127.0.0.1")
    assert cloud["gpus"] == [] and cloud["port"] is None and cloud["last_error"] is None
    assert KEY not in str(cloud)
    assert world.shows("cloud", "running")

    assert world.daemon.statuses().get("standby", "stopped") == "stopped"

    world.endpoint.stop()
    world.daemon.wait_statuses({"cloud": "error"}, timeout_s=30)
    # the planner sees the remote model's error: its local fallback stands in
    world.daemon.wait_statuses({"standby": "running"}, timeout_s=30)
    reason = str(world.model("cloud")["last_error"])
    assert "connection refused" in reason and f"{world.endpoint.url}/models" in reason, reason
    assert world.shows("cloud", "error")

    world.endpoint.start()
    world.daemon.wait_statuses({"cloud": "running"}, timeout_s=30)
    assert world.model("cloud")["last_error"] is None
    world.daemon.wait_statuses({"standby": "stopped"}, timeout_s=30)
    kinds = [kind for kind, _ in world.events("cloud")]
    # told once each way, not once per failed probe
    assert kinds.count("error") == 1 and kinds.count("recovered") == 1, kinds
    assert kinds.index("error") < kinds.index("recovered")


def test_a_key_the_host_does_not_bind_is_never_sent_and_the_status_says_why(
    world: World,
) -> None:
    assert wait_for(lambda: world.model("unbound")["status"] == "error", 30, 0.2)
    reason = str(world.model("unbound")["last_error"])
    assert "RECONCILER_SECRET_UNBOUND" in reason and UNBOUND_KEY not in reason, reason
    sent = world.endpoint.authorizations()
    assert f"Bearer {KEY}" in sent, "the bound key's probes never arrived: proves nothing"
    assert not any(UNBOUND_KEY in header for header in sent)


def test_a_certificate_that_does_not_name_the_endpoint_is_refused(world: World) -> None:
    assert wait_for(lambda: world.model("misnamed")["status"] == "error", 30, 0.2)
    reason = str(world.model("misnamed")["last_error"])
    assert "TLS verification failed" in reason, reason


def test_an_endpoint_that_never_answers_holds_back_no_other_change(world: World) -> None:
    assert wait_for(lambda: world.silent.accepted, 30, 0.1), "the hung endpoint was not probed"
    daemon, host = world.daemon, world.daemon.host
    changed = {**world.local, "parameters": {"max-model-len": 2048}}
    host.write_model(changed)
    began = time.monotonic()
    commit(host, "local: longer context")

    def applied() -> bool:
        record = host.state().models.get("local")
        return record is not None and record.spec_hash == spec_hash(changed)

    assert wait_for(applied, APPLIED_WITHIN_S, 0.1), daemon.log()
    daemon.wait_statuses({"local": "running"}, timeout_s=APPLIED_WITHIN_S)
    print(f"applied {time.monotonic() - began:.1f} s after its commit, beside a hung probe")
    # its probe still waits (an hour, as its spec allows): nothing was judged, nothing sent twice
    hung = world.model("hung")
    assert hung["status"] == "starting" and hung["last_error"] is None, hung
    assert len(world.silent.accepted) == 1

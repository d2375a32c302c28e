"""Every host's gateway serves the whole fleet: two real gateway processes (python -m
reconciler.gateway) as hosts `a` and `b`, each in front of its own stand-in engines, on tables
made the way the daemon makes them (core.fleet.host_view of one fleet, then build_routes), each
host's gateway URL being the other process's address.

What a client of either host must see: a model of the other host answered through it, with
X-Reconciler-Host naming who answered; a model on both hosts served by both; the fleet key sent
to the other host and the client's key never; a forwarded request never forwarded again; the key
withheld when the operator did not bind the other host; and a host whose gateway stops makes the
other answer its models at once (503 + Retry-After, or their fallback).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from daemon_support import free_port
from gateway_support import Upstream

from reconciler.core.cluster import ClusterSpec, DeclaredGPU, HostSpec
from reconciler.core.desired import DesiredState
from reconciler.core.fleet import host_view
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.spec import ModelSpec
from reconciler.gateway.peer_watch import probe_gateway
from reconciler.gateway.routes import ApiKey, GatewaySettings, build_routes, write_routes
from reconciler.gateway.service import GatewayService

FLEET_ENV = "RECONCILER_SECRET_FLEET"
FLEET_KEY = "fleet-0123456789abcdefghijklmnopqrstuvwxyz"
CLIENT_ENV = "RECONCILER_SECRET_CLIENT"
CLIENT_KEY = "sk-client-0123456789abcdefghijklmnopqrstu"


def spec(model_id: str, hosts: list[str], **fields: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": model_id,
            "framework": "llama_cpp",
            "model_path": f"/models/{model_id}.gguf",
            "resource_requirements": {"gpu_memory_mb": 1000},
            "routing": "least_outstanding",
            "hosts": hosts,
            **fields,
        }
    )


class Host:
    """One host of the fleet: its gateway process (its own routes file, log and environment)
    and the stand-in engines of the models it runs."""

    def __init__(self, tmp_path: Path, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.routes_path = self.dir / "routes.json"
        self.log_path = self.dir / "gateway.log"
        self.port = free_port()
        self.service = GatewayService(
            f"127.0.0.1:{self.port}",
            self.routes_path,
            log_path=self.log_path,
            env={**os.environ, **env},
            poll_interval_s=0.05,
        )
        self.engines: dict[str, Upstream] = {}
        self.counted: dict[str, list[int]] = {}
        """per engine: its request count when it started, then at each question"""
        self.generation = 0

    @property
    def base(self) -> str:
        return self.service.base

    def engine(self, model_id: str) -> Upstream:
        """The stand-in engine of `model_id` on this host; it names itself `<model>-on-<host>`
        in every answer."""
        self.engines[model_id] = Upstream.fast(name=f"{model_id}-on-{self.name}", chunks=4)
        self.counted[model_id] = [self.engines[model_id].stats()["requests"]]
        return self.engines[model_id]

    def publish(self, fleet: DesiredState, settings: GatewaySettings, down: set[str]) -> None:
        records = {
            m: InstanceRecord(id=m, status=Status.running, port=e.port, pid=1)
            for m, e in self.engines.items()
        }
        self.generation += 1
        routes = build_routes(
            host_view(fleet, self.name),
            records,
            settings,
            generation=self.generation,
            down_hosts=down,
        )
        write_routes(self.routes_path, routes)
        deadline = time.monotonic() + 10
        while self.service.inflight()["generation"] < self.generation:
            assert time.monotonic() < deadline, f"{self.name}'s gateway did not load its table"
            time.sleep(0.02)

    def answered(self, model_id: str) -> int:
        """The requests the engine got since it started, beside its health checks and these
        questions (the stand-in counts every request it reads, its /stats ones too)."""
        asked = self.counted[model_id]
        asked.append(self.engines[model_id].stats()["requests"])
        return asked[-1] - asked[0] - (len(asked) - 1)

    def post(self, model: str, key: str | None = None, **extra: object) -> httpx.Response:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return httpx.post(
            f"{self.base}/v1/chat/completions", json=body, headers=headers, timeout=30
        )

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=5).text

    def close(self) -> None:
        self.service.stop()
        for engine in self.engines.values():
            engine.kill()


class Fleet:
    def __init__(self, tmp_path: Path, env_a: dict[str, str], env_b: dict[str, str]) -> None:
        self.a = Host(tmp_path, "a", env_a)
        self.b = Host(tmp_path, "b", env_b)
        self.hosts = [self.a, self.b]

    def start(self) -> None:
        for host in self.hosts:
            host.service.start()

    def desired(self, *specs: ModelSpec) -> DesiredState:
        gpus = [DeclaredGPU(index=0, memory_mb=24000)]
        hosts = {h.name: HostSpec(gpus=gpus, gateway=h.base) for h in self.hosts}
        return DesiredState({s.id: s for s in specs}, ClusterSpec(), hosts=hosts)

    def publish(self, desired: DesiredState, **settings: object) -> None:
        for host in self.hosts:
            host.publish(desired, GatewaySettings(host=host.name, **settings), set())

    def close(self) -> None:
        for host in self.hosts:
            host.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path, {}, {})
    try:
        yield f
    finally:
        f.close()


MODELS = (
    spec("alpha", ["a"]),
    spec("beta", ["b"], aliases=["bee"]),
    spec("both", ["a", "b"]),
    spec("fragile", ["b"], fallback="alpha"),
)


def start_with_engines(f: Fleet, **settings: object) -> DesiredState:
    f.a.engine("alpha")
    f.a.engine("both")
    f.b.engine("beta")
    f.b.engine("both")
    f.b.engine("fragile")
    f.start()
    desired = f.desired(*MODELS)
    f.publish(desired, **settings)
    return desired


def test_a_model_of_each_host_is_answered_through_the_other_hosts_gateway(fleet: Fleet) -> None:
    start_with_engines(fleet)
    a, b = fleet.a, fleet.b
    through_a = a.post("bee")  # an alias: b's table knows it
    assert through_a.status_code == 200, through_a.text
    assert through_a.json()["model"] == "beta-on-b"
    assert through_a.headers["X-Reconciler-Host"] == "b"
    assert through_a.headers["X-Reconciler-Model"] == "beta"
    assert through_a.headers["X-Reconciler-Instance"] == "beta"
    through_b = b.post("alpha")
    assert through_b.status_code == 200 and through_b.json()["model"] == "alpha-on-a"
    assert through_b.headers["X-Reconciler-Host"] == "a"
    at_home = a.post("alpha")
    assert at_home.json()["model"] == "alpha-on-a" and at_home.headers["X-Reconciler-Host"] == "a"
    # a stream comes through chunk by chunk, to its end
    with httpx.stream(
        "POST",
        f"{a.base}/v1/chat/completions",
        json={"model": "beta", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    ) as stream:
        assert stream.headers["X-Reconciler-Host"] == "b"
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 5
    assert b.answered("beta") == 2 and a.answered("alpha") == 2
    # every response of a fleet gateway names its host, refusals too
    unknown = a.post("nobody")
    assert unknown.status_code == 404 and unknown.headers["X-Reconciler-Host"] == "a"
    listed = httpx.get(f"{a.base}/v1/models", timeout=5).json()["data"]
    hosts = {m["id"]: m["hosts"] for m in listed}
    assert hosts == {
        "alpha": ["a"],
        "beta": ["b"],
        "bee": ["b"],
        "both": ["a", "b"],
        "fragile": ["b"],
    }
    assert 'reconciler_gateway_forwarded_total{code="200",host="b",model="beta"} 2.0' in (
        a.metrics()
    )


def test_a_model_on_both_hosts_is_served_by_both_through_either_gateway(fleet: Fleet) -> None:
    start_with_engines(fleet)
    a, b = fleet.a, fleet.b
    seen_from_a = [a.post("both").headers["X-Reconciler-Host"] for _ in range(6)]
    # one request at a time: every instance has none outstanding, and ties take turns
    assert sorted(seen_from_a) == ["a", "a", "a", "b", "b", "b"]
    seen_from_b = [b.post("both").headers["X-Reconciler-Host"] for _ in range(6)]
    assert sorted(seen_from_b) == ["a", "a", "a", "b", "b", "b"]
    # each request reached one engine once: b never sent a's forwarded requests back, nor a b's
    assert (a.answered("both"), b.answered("both")) == (6, 6)


def test_a_forwarded_request_is_served_here_or_refused_never_forwarded_again(
    fleet: Fleet,
) -> None:
    start_with_engines(fleet)
    a, b = fleet.a, fleet.b
    forwarded = {"X-Reconciler-Forwarded": "a"}
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}
    bounced = httpx.post(f"{b.base}/v1/chat/completions", json=body, headers=forwarded, timeout=10)
    assert bounced.status_code == 503 and "Retry-After" in bounced.headers
    assert bounced.json()["error"]["code"] == "model_unavailable"
    assert a.answered("alpha") == 0
    for _ in range(4):  # a model b runs too: only b's own engine
        body["model"] = "both"
        served = httpx.post(
            f"{b.base}/v1/chat/completions", json=body, headers=forwarded, timeout=10
        )
        assert served.status_code == 200 and served.headers["X-Reconciler-Host"] == "b"
    assert (a.answered("both"), b.answered("both")) == (0, 4)


def test_the_fleet_key_goes_to_the_other_host_and_the_clients_key_never(tmp_path: Path) -> None:
    keys = {FLEET_ENV: FLEET_KEY, CLIENT_ENV: CLIENT_KEY, f"{FLEET_ENV}_HOSTS": "127.0.0.1"}
    f = Fleet(tmp_path, keys, keys)
    try:
        start_with_engines(f, fleet_key_env=FLEET_ENV, api_keys=(ApiKey("client", CLIENT_ENV),))
        answer = f.a.post("beta", key=CLIENT_KEY)
        assert answer.status_code == 200 and answer.headers["X-Reconciler-Host"] == "b"
        b_metrics = f.b.metrics()
        assert 'reconciler_gateway_key_requests_total{key="fleet"} 1.0' in b_metrics
        assert 'key="client"' not in b_metrics  # a did not pass the client's key on
        assert f.b.post("beta").status_code == 401  # b itself wants a key
        assert f.b.post("beta", key=FLEET_KEY).status_code == 200  # the fleet key is one
    finally:
        f.close()


def test_the_fleet_key_is_withheld_from_a_host_its_hosts_variable_does_not_list(
    tmp_path: Path,
) -> None:
    # b's gateway is at 127.0.0.1: "localhost" is another name, and the binding is by name
    keys = {FLEET_ENV: FLEET_KEY, f"{FLEET_ENV}_HOSTS": "localhost"}
    f = Fleet(tmp_path, keys, keys)
    try:
        start_with_engines(f, fleet_key_env=FLEET_ENV)
        refused = f.a.post("beta")
        assert refused.status_code == 502, refused.text
        assert refused.json()["error"]["code"] == "fleet_key_withheld"
        assert f.b.answered("beta") == 0
        log = f.a.log_path.read_text()
        assert "fleet key withheld" in log and f"{FLEET_ENV}_HOSTS" in log
        assert FLEET_KEY not in log
        assert f.a.post("alpha").status_code == 200  # its own models are untouched
    finally:
        f.close()


def test_when_bs_gateway_stops_a_answers_bs_models_at_once(fleet: Fleet) -> None:
    desired = start_with_engines(fleet)
    a, b = fleet.a, fleet.b
    assert a.post("beta").status_code == 200
    assert probe_gateway(b.base, 2.0) is None  # what the daemon of a asks every 5 s
    b.service.stop()
    assert probe_gateway(b.base, 2.0) == f"connection refused by {b.base}"
    for _ in range(3):
        started = time.monotonic()
        gone = a.post("beta")
        took = time.monotonic() - started
        assert gone.status_code == 503, gone.text
        assert int(gone.headers["Retry-After"]) > 0 and gone.headers["X-Reconciler-Host"] == "a"
        assert took < 1.0, f"a waited {took:.2f} s for a host that is gone"
    fallback = a.post("fragile")  # its fallback runs on a
    assert fallback.status_code == 200, fallback.text
    assert fallback.headers["X-Reconciler-Model"] == "alpha"
    assert fallback.json()["model"] == "alpha-on-a"
    shared = [a.post("both") for _ in range(4)]  # the host left is skipped, not retried
    assert [r.headers["X-Reconciler-Host"] for r in shared] == ["a"] * 4
    assert a.post("alpha").status_code == 200
    # the daemon's probe says b is down: a's table leaves it out, and says so
    a.publish(desired, GatewaySettings(host="a"), down={"b"})
    models = {m["id"]: m for m in httpx.get(f"{a.base}/v1/models", timeout=5).json()["data"]}
    assert models["beta"]["status"] == "error" and models["alpha"]["status"] == "running"
    again = a.post("beta")
    assert again.status_code == 503 and again.json()["error"]["code"] == "model_unavailable"

"""Remote models end to end: the real daemon (`reconciler run`) and its gateway in front of a
stand-in of a hosted API (tests/fakes/hosted_endpoint.py) on loopback, over TLS with a certificate
from a CA the test makes (trustme), and the vLLM stand-in as the local engine.

What is checked is what an operator and a client notice: a hosted model answers on the one
endpoint under its id and its aliases, streamed and not, with the key the host bound to it (the
client's own key never reaches the provider) and the provider's model name; the provider's 401 is
the client's 401 (a key revoked between probes), or the model's `error` (a key it never took); an
endpoint that goes down is `error` in the API and its fallback answers; a key the host did not
bind to the endpoint's host is never sent; a local model that cannot be placed is answered by its
hosted fallback; a burst beyond `queue_over` is split between the local engine and the hosted
model, every request answered once.

One daemon serves the whole module (starting one costs seconds on a shared 2-core host); every
test asks its own models, and tags its prompts so that what the stand-ins record is its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from apply_support import managed_host, stand_in, wait_for
from cli_support import readme_plan_matches
from daemon_support import Daemon, free_port, init_repo
from hosted_support import Tls, make_tls

REPO = Path(__file__).resolve().parents[2]
HOSTED = REPO / "tests" / "fakes" / "hosted_endpoint.py"
KEY = "sk-hosted-0123456789abcdefghijklmnop"
"""what the host binds to the provider (RECONCILER_SECRET_CLOUD)"""
REVOKED_KEY = "sk-hosted-revoked-0123456789abcdefgh"
UNBOUND_KEY = "sk-hosted-unbound-0123456789abcdefgh"
WRONG_KEY = "sk-hosted-wrong-0123456789abcdefghij"
"""bound to the provider's host, but not a key the provider accepts"""
CLIENT_KEY = "sk-client-own-key-must-stay-here-000"
"""what a client of the gateway sends: never forwarded to a provider"""
UPSTREAM = "gpt-upstream"
README_SECTION = "## Remote models: local GPUs and the cloud behind one endpoint"
GPU = [{"index": 0, "name": "Simulated L4", "memory_mb": 8000}]
QUEUE_OVER = 2


# -- the stand-in provider --------------------------------------------------------------------


class Provider:
    """One hosted_endpoint.py process on a free loopback port."""

    def __init__(self, tls: Tls, name: str, *args: str) -> None:
        self.tls = tls
        self.name = name
        self.port = free_port()
        argv = [sys.executable, str(HOSTED), "--port", str(self.port), "--name", name]
        argv += ["--cert", str(tls.cert), "--key", str(tls.key), *args]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        up = wait_for(self._answers, 30, 0.1)
        assert up, f"the stand-in provider {name} did not answer"

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1"

    def _answers(self) -> bool:
        assert self.process.poll() is None, f"provider {self.name} exited"
        try:
            httpx.get(f"{self.endpoint}/models", verify=self.tls.context(), timeout=2)
        except httpx.HTTPError:
            return False
        return True

    def received(self) -> list[dict[str, Any]]:
        url = f"https://127.0.0.1:{self.port}/stand-in/stats"
        return list(httpx.get(url, verify=self.tls.context(), timeout=5).json()["requests"])

    def chats(self, tag: str) -> list[dict[str, Any]]:
        """The chat requests whose prompt carries `tag`."""
        return [r for r in self.received() if r["method"] == "POST" and tag in r["content"]]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def remote(model_id: str, endpoint: str, **fields: Any) -> dict[str, Any]:
    """A hosted model, probed every second (the default is every 30 s)."""
    spec: dict[str, Any] = {
        "id": model_id,
        "framework": "remote",
        "endpoint": endpoint,
        "upstream_model": UPSTREAM,
        "api_key_env": "RECONCILER_SECRET_CLOUD",
        "priority": 5,
        "health_check": {"path": "/models", "interval_s": 1, "timeout_s": 5},
    }
    return {**spec, **fields}


# -- the module's daemon ----------------------------------------------------------------------


@dataclass
class World:
    daemon: Daemon
    hosted: Provider
    """`cloud`, `cloud-revoked` and `cloud-unbound` call it"""
    edge: Provider
    """`cloud-edge` calls it; a test stops it"""
    revoked_keys: Path
    """hosted's keys file: REVOKED_KEY until a test revokes it"""
    burst_broken: Path
    """while it exists, `burst`'s engine exits at start (and is retried): its requests wait"""
    stream_gate: Path
    """while it is missing, hosted holds every stream after its first word"""

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.daemon.gateway_url, api_key=CLIENT_KEY, max_retries=0, timeout=30
        )

    def post(self, model: str, tag: str) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": tag}], "max_tokens": 8}
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        url = f"{self.daemon.gateway_url}/chat/completions"
        return httpx.post(url, json=body, headers=headers, timeout=60)

    def model(self, model_id: str) -> dict[str, Any]:
        return dict(self.daemon.json(f"/api/v1/models/{model_id}"))

    def gateway_metrics(self) -> str:
        base = self.daemon.gateway_url.removesuffix("/v1")
        return httpx.get(f"{base}/metrics", timeout=5).text

    def gateway_status(self, model_id: str) -> str | None:
        base = self.daemon.gateway_url.removesuffix("/v1")
        report = httpx.get(f"{base}/internal/inflight", timeout=5).json()
        model = report["models"].get(model_id)
        return None if model is None else str(model["status"])


def tag() -> str:
    return f"tag-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("remote")
    tls = make_tls(root)
    revoked_keys = root / "keys.txt"
    revoked_keys.write_text(REVOKED_KEY + "\n")
    burst_broken = root / "burst-broken"
    burst_broken.touch()
    stream_gate = root / "stream-gate"
    stream_gate.touch()
    hosted = Provider(
        tls,
        "hosted",
        *("--api-key", KEY, "--keys-file", str(revoked_keys), "--stream-gate", str(stream_gate)),
    )
    edge = Provider(tls, "edge", "--api-key", KEY)
    models = [
        remote("cloud", hosted.endpoint, aliases=["gpt-4o-mini"]),
        # probed rarely: revoking its key at the provider shows in a request before a probe
        remote(
            "cloud-revoked",
            hosted.endpoint,
            api_key_env="RECONCILER_SECRET_REVOKED",
            health_check={"path": "/models", "interval_s": 3600},
        ),
        remote("cloud-unbound", hosted.endpoint, api_key_env="RECONCILER_SECRET_UNBOUND"),
        remote("cloud-wrong", hosted.endpoint, api_key_env="RECONCILER_SECRET_WRONG"),
        remote("cloud-edge", edge.endpoint, fallback="tiny"),
        stand_in("tiny", priority=2, resource_requirements={"gpu_count": 1, "gpu_memory_mb": 500}),
        # no GPU of this host holds it: its hosted fallback answers for it
        stand_in(
            "big",
            priority=6,
            fallback="cloud",
            resource_requirements={"gpu_count": 1, "gpu_memory_mb": 64000},
        ),
        # its engine cannot start until the test repairs it: retried meanwhile, so `starting`
        stand_in(
            "burst",
            priority=4,
            overflow={"model": "cloud", "queue_over": QUEUE_OVER},
            env={"FAKE_VLLM_EXIT_IF_EXISTS": str(burst_broken)},
            retry_policy={"max_retries": 100000, "backoff_s": 0.2, "max_backoff_s": 1},
            resource_requirements={"gpu_count": 1, "gpu_memory_mb": 500},
        ),
    ]
    processes = [hosted, edge]
    try:
        with managed_host(root / "host") as host:
            host.write_cluster(GPU)
            host.env.update(
                {
                    "RECONCILER_REMOTE_CA_FILE": str(tls.ca),
                    "RECONCILER_SECRET_CLOUD": KEY,
                    "RECONCILER_SECRET_CLOUD_HOSTS": "127.0.0.1",
                    "RECONCILER_SECRET_REVOKED": REVOKED_KEY,
                    "RECONCILER_SECRET_REVOKED_HOSTS": "127.0.0.1",
                    # bound to nothing: the host never lets it go anywhere
                    "RECONCILER_SECRET_UNBOUND": UNBOUND_KEY,
                    "RECONCILER_SECRET_WRONG": WRONG_KEY,
                    "RECONCILER_SECRET_WRONG_HOSTS": "127.0.0.1",
                }
            )
            for spec in models:
                host.write_model(spec)
            init_repo(host)
            daemon = Daemon(host, free_port(), None, None, extra_args=("--resync", "3600"))
            try:
                daemon.start()
                daemon.wait_statuses({"cloud": "running", "tiny": "running"}, timeout_s=60)
                yield World(daemon, hosted, edge, revoked_keys, burst_broken, stream_gate)
            finally:
                daemon.stop()
    finally:
        for process in processes:
            process.stop()


# -- a hosted model on the one endpoint ---------------------------------------------------------


def test_a_hosted_model_is_shown_like_any_model(world: World) -> None:
    cloud = world.model("cloud")
    assert cloud["status"] == "running"
    assert cloud["framework"] == "remote"
    assert "127.0.0.1" in str(cloud["endpoint"])
    assert cloud["gpus"] == [] and cloud["port"] is None
    status = world.daemon.get("/metrics").text
    shown = [line for line in status.splitlines() if line.startswith("reconciler_model_status")]
    assert 'reconciler_model_status{model="cloud",status="running"} 1.0' in shown, shown
    listed = {m.id for m in world.client().models.list().data}
    assert {"cloud", "gpt-4o-mini"} <= listed


def test_chat_goes_to_the_provider_with_its_name_and_the_bound_key(world: World) -> None:
    asked = tag()
    raw = world.client().chat.completions.with_raw_response.create(
        model="cloud", messages=[{"role": "user", "content": asked}]
    )
    answer = raw.parse()
    assert raw.headers["x-reconciler-model"] == "cloud"
    assert answer.choices[0].message.content == "hosted says hello to you"
    assert answer.system_fingerprint == "hosted"
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    [seen] = world.hosted.chats(asked)
    assert seen["model"] == UPSTREAM  # the provider's name for it, not the client's
    assert seen["authorization"] == f"Bearer {KEY}"  # the host's key, not the client's
    assert seen["host"] == f"127.0.0.1:{world.hosted.port}"
    assert seen["path"] == "/v1/chat/completions"
    metrics = world.gateway_metrics()
    assert 'reconciler_gateway_requests_total{code="200",model="cloud"}' in metrics
    assert 'reconciler_gateway_tokens_total{kind="completion",model="cloud"}' in metrics


def test_a_stream_is_relayed_chunk_by_chunk(world: World) -> None:
    asked = tag()
    world.stream_gate.unlink()  # the provider holds the stream after its first word ...
    try:
        stream = world.client().chat.completions.create(
            model="cloud",
            messages=[{"role": "user", "content": asked}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = iter(stream)
        first = next(c for c in chunks if c.choices and c.choices[0].delta.content)
        # ... and the client has that word already: the gateway did not wait for the rest
        assert first.choices[0].delta.content == "hosted"
    finally:
        world.stream_gate.touch()
    pieces, usage = ["hosted"], None
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert pieces == ["hosted", " says", " hello", " to", " you"]
    assert usage is not None and usage.completion_tokens == 5
    [seen] = world.hosted.chats(asked)
    assert seen["stream"] and seen["model"] == UPSTREAM


def test_an_alias_reaches_the_same_provider(world: World) -> None:
    asked = tag()
    response = world.post("gpt-4o-mini", asked)
    assert response.status_code == 200, response.text
    assert response.headers["x-reconciler-model"] == "cloud"
    assert response.json()["model"] == UPSTREAM
    assert [r["model"] for r in world.hosted.chats(asked)] == [UPSTREAM]


def test_the_clients_own_key_never_reaches_a_provider(world: World) -> None:
    world.post("cloud", tag())
    for provider in (world.hosted, world.edge):
        sent = {r["authorization"] for r in provider.received()}
        assert not any(CLIENT_KEY in str(header) for header in sent), sent


# -- the provider says no, or is gone ------------------------------------------------------------


def test_a_key_revoked_at_the_provider_gets_its_401_passed_through(world: World) -> None:
    world.daemon.wait_statuses({"cloud-revoked": "running"}, timeout_s=60)
    assert wait_for(lambda: world.post("cloud-revoked", tag()).status_code == 200, 30, 0.2)
    world.revoked_keys.write_text("")  # the provider no longer accepts the host's key
    asked = tag()
    with pytest.raises(openai.AuthenticationError) as refused:
        world.client().chat.completions.create(
            model="cloud-revoked", messages=[{"role": "user", "content": asked}]
        )
    assert refused.value.status_code == 401
    assert refused.value.body["code"] == "invalid_api_key"  # the provider's own error JSON
    [seen] = world.hosted.chats(asked)
    assert seen["authorization"] == f"Bearer {REVOKED_KEY}"


def test_a_key_the_provider_refuses_makes_the_model_an_error_with_the_reason(world: World) -> None:
    # its probe gets the provider's 401: the model is error (requests get 503, no fallback)
    assert wait_for(lambda: world.model("cloud-wrong")["status"] == "error", 30, 0.2)
    assert "401" in str(world.model("cloud-wrong")["last_error"])
    assert wait_for(lambda: world.post("cloud-wrong", tag()).status_code == 503, 30, 0.2)
    probes = [r for r in world.hosted.received() if r["authorization"] == f"Bearer {WRONG_KEY}"]
    assert probes and all(r["path"] == "/v1/models" for r in probes), probes


def test_a_key_the_host_did_not_bind_is_never_sent(world: World) -> None:
    # RECONCILER_SECRET_UNBOUND has no _HOSTS: neither the probe nor a request may carry it
    assert wait_for(lambda: world.model("cloud-unbound")["status"] == "error", 30, 0.2)
    reason = str(world.model("cloud-unbound")["last_error"])
    assert "RECONCILER_SECRET_UNBOUND_HOSTS" in reason, reason  # what the operator would set
    assert UNBOUND_KEY not in reason
    response = world.post("cloud-unbound", tag())
    assert response.status_code in (502, 503), response.text
    assert response.json()["error"]["message"]
    sent = [str(r["authorization"]) for r in world.hosted.received()]
    assert not any(UNBOUND_KEY in header for header in sent)


def test_an_endpoint_that_goes_down_is_an_error_and_its_fallback_answers(world: World) -> None:
    world.daemon.wait_statuses({"cloud-edge": "running"}, timeout_s=60)
    first = world.post("cloud-edge", tag())
    assert first.status_code == 200 and first.json()["system_fingerprint"] == "edge"
    world.edge.stop()
    # at once (before a probe has seen it) the request fails over before its first byte
    after = world.post("cloud-edge", tag())
    assert after.status_code == 200, after.text
    assert after.headers["x-reconciler-model"] == "tiny"
    world.daemon.wait_statuses({"cloud-edge": "error"}, timeout_s=60)
    assert world.model("cloud-edge")["last_error"]
    assert wait_for(lambda: world.gateway_status("cloud-edge") == "error", 30, 0.1)
    later = world.post("cloud-edge", tag())
    assert later.status_code == 200 and later.headers["x-reconciler-model"] == "tiny"
    # the daemon's /metrics is rebuilt at most once a second: it follows within a moment
    error = 'reconciler_model_status{model="cloud-edge",status="error"} 1.0'
    assert wait_for(lambda: error in world.daemon.get("/metrics").text.splitlines(), 30, 0.2)


# -- local models, and the cloud behind them ------------------------------------------------------


def test_a_local_model_that_cannot_be_placed_is_answered_by_its_hosted_fallback(
    world: World,
) -> None:
    # 64000 MiB on an 8000 MiB GPU: the plan says who answers instead
    assert wait_for(lambda: world.gateway_status("big") == "unschedulable", 30, 0.1)
    big = world.model("big")
    assert big["status"] == "stopped" and big["gpus"] == [], big
    assert "its requests go to remote fallback cloud (127.0.0.1)" in big["reason"], big
    served = world.daemon.json("/api/v1/plan")
    assert [u["model"] for u in served["unschedulable"]] == ["big"], served
    # the API serves the loop's plan whole: the hosted models it lists, and whom they answer for
    cloud = next(r for r in served["remote"] if r["model"] == "cloud")
    assert cloud["host"] == "127.0.0.1" and "big" in cloud["serves_for"], served["remote"]
    asked = tag()
    response = world.post("big", asked)
    assert response.status_code == 200, response.text
    assert response.headers["x-reconciler-model"] == "cloud"
    assert response.json()["system_fingerprint"] == "hosted"
    assert [r["model"] for r in world.hosted.chats(asked)] == [UPSTREAM]


def test_a_burst_beyond_queue_over_is_split_between_the_engine_and_the_cloud(
    world: World,
) -> None:
    base = world.daemon.gateway_url.removesuffix("/v1")

    def queued() -> int:
        report = httpx.get(f"{base}/internal/inflight", timeout=5).json()
        return int(report["models"]["burst"]["queued"])

    assert wait_for(lambda: world.gateway_status("burst") == "starting", 30, 0.1), (
        world.daemon.log()
    )
    tags = [tag() for _ in range(QUEUE_OVER + 1 + 5)]
    local_tags, cloud_tags = tags[: QUEUE_OVER + 1], tags[QUEUE_OVER + 1 :]
    with ThreadPoolExecutor(len(tags)) as pool:
        # queue_over + 1 requests wait while the engine cannot start (none overflows: only more
        # than queue_over waiting ones send the next one elsewhere) ...
        waiting = [pool.submit(world.post, "burst", t) for t in local_tags]
        assert wait_for(lambda: queued() == QUEUE_OVER + 1, 30, 0.05), world.daemon.log()
        # ... so the next ones go to the cloud at once
        answers = [
            f.result(timeout=60) for f in [pool.submit(world.post, "burst", t) for t in cloud_tags]
        ]
        assert not any(f.done() for f in waiting)
        assert world.gateway_status("burst") == "starting"
        world.burst_broken.unlink()  # repaired: the next retry starts it, and the waiting ones go
        answers += [f.result(timeout=120) for f in waiting]
    assert [a.status_code for a in answers] == [200] * len(tags), [a.text for a in answers]
    who = [a.headers["x-reconciler-model"] for a in answers]
    assert who == ["cloud"] * len(cloud_tags) + ["burst"] * len(local_tags)
    # each request answered once: the provider got exactly the overflowed ones ...
    for t in cloud_tags:
        assert len(world.hosted.chats(t)) == 1, t
    for t in local_tags:
        assert world.hosted.chats(t) == [], t
    # ... and the engine exactly the ones that waited for it
    port = world.model("burst")["port"]
    stats = httpx.get(f"http://127.0.0.1:{port}/stand-in/stats", timeout=5).json()
    assert len(stats["models"]) == len(local_tags), stats
    metrics = world.gateway_metrics()
    line = f'reconciler_gateway_overflow_total{{model="burst",to="cloud"}} {len(cloud_tags)}.0'
    assert line in metrics, [m for m in metrics.splitlines() if "overflow" in m]


# -- the README's worked example ------------------------------------------------------------------


def test_the_readmes_worked_example_plans_as_the_readme_shows(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    files = re.findall(r"```yaml\n# (desired-state/\S+\.yaml)\n(.*?)```", section, re.S)
    assert {name for name, _ in files} >= {
        "desired-state/cluster.yaml",
        "desired-state/models/cloud-mini.yaml",
        "desired-state/models/qwen2-7b.yaml",
    }
    for name, body in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    readme_plan_matches(
        section, tmp_path, {**os.environ, "RECONCILER_STATE_DIR": str(tmp_path / "state")}
    )

"""The gateway process in front of a remote model: a TLS stand-in of a hosted OpenAI-compatible
API (tests/fakes/hosted_endpoint.py, a certificate from a CA the test makes with trustme) and the
fast local upstream. Routes are written as the daemon writes them; the gateway's environment
holds the key, its host binding and the CA bundle, as `reconciler run` passes them on."""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import trustme
from daemon_support import free_port
from gateway_support import REPO, Harness, Upstream, harness, model

from reconciler.gateway.routes import OverflowRoute, RemoteRoute, RouteModel

HOSTED = REPO / "tests" / "fakes" / "hosted_endpoint.py"
KEY_ENV = "RECONCILER_SECRET_CLOUD_KEY"
CLOUD_KEY = "sk-cloud-0123456789abcdefghijklmnop"
UPSTREAM_MODEL = "gpt-upstream"


class Hosted:
    """The hosted stand-in on a free loopback port, HTTPS with a trustme certificate."""

    def __init__(self, tmp_path: Path, ca: trustme.CA, name: str, delay_ms: float = 0) -> None:
        self.port = free_port()
        self.endpoint = f"https://127.0.0.1:{self.port}/v1"
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        issued = ca.issue_cert("127.0.0.1", "localhost")
        issued.cert_chain_pems[0].write_to_path(cert)
        issued.private_key_pem.write_to_path(key)
        argv = [sys.executable, str(HOSTED), "--port", str(self.port), "--cert", str(cert)]
        argv += ["--key", str(key), "--api-key", CLOUD_KEY, "--name", name]
        argv += ["--delay-ms", str(delay_ms)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(self.ca_file)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return
            except httpx.HTTPError:
                assert self.process.poll() is None, "the hosted stand-in exited"
                assert time.monotonic() < deadline, "the hosted stand-in did not answer"
                time.sleep(0.05)

    def stats(self) -> list[dict[str, object]]:
        url = f"https://127.0.0.1:{self.port}/stand-in/stats"
        verify = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.get(url, verify=verify, timeout=5).json()["requests"]

    def chats(self) -> list[dict[str, object]]:
        return [r for r in self.stats() if r["path"] == "/v1/chat/completions"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cloud(tmp_path: Path, ca: trustme.CA) -> Iterator[Hosted]:
    hosted = Hosted(tmp_path, ca, "cloud-a")
    yield hosted
    hosted.stop()


def gateway_env(monkeypatch: pytest.MonkeyPatch, hosted: Hosted, bound: bool = True) -> None:
    """What the operator sets on the host (the gateway inherits the daemon's environment)."""
    monkeypatch.setenv(KEY_ENV, CLOUD_KEY)
    monkeypatch.setenv("RECONCILER_REMOTE_CA_FILE", str(hosted.ca_file))
    if bound:
        monkeypatch.setenv(KEY_ENV + "_HOSTS", "127.0.0.1")
    else:
        monkeypatch.delenv(KEY_ENV + "_HOSTS", raising=False)


def remote(
    model_id: str,
    endpoint: str,
    *,
    status: str = "running",
    key_env: str = KEY_ENV,
    max_concurrency: int | None = None,
    **fields: object,
) -> RouteModel:
    """A remote model's route as build_routes makes it: running, one instance at its endpoint."""
    route = RemoteRoute(endpoint, UPSTREAM_MODEL, key_env, max_concurrency)
    urls = (endpoint,) if status == "running" else ()
    return model(model_id, *urls, status=status, remote=route, **fields)


@pytest.fixture
def gw(tmp_path: Path, cloud: Hosted, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    gateway_env(monkeypatch, cloud)
    with harness(tmp_path) as h:
        yield h


def ask(client: openai.OpenAI, name: str, text: str = "hi") -> object:
    return client.chat.completions.with_raw_response.create(
        model=name, messages=[{"role": "user", "content": text}]
    )


def test_chat_reaches_the_endpoint_with_its_name_its_key_and_its_host(
    gw: Harness, cloud: Hosted
) -> None:
    gw.write(remote("cloud", cloud.endpoint, aliases=("gpt-4o",)))
    client = gw.client(api_key="the-clients-own-key")  # never forwarded to the endpoint
    raw = ask(client, "gpt-4o", "one two three")
    assert raw.headers["X-Reconciler-Model"] == "cloud"
    answer = raw.parse()
    assert answer.system_fingerprint == "cloud-a"
    assert answer.choices[0].message.content == "cloud-a says hello to you"
    (seen,) = cloud.chats()
    assert seen["model"] == UPSTREAM_MODEL
    assert seen["authorization"] == f"Bearer {CLOUD_KEY}"
    assert seen["host"] == f"127.0.0.1:{cloud.port}"
    metrics = gw.metrics()
    assert 'reconciler_gateway_tokens_total{kind="prompt",model="cloud"} 3.0' in metrics
    assert 'reconciler_gateway_tokens_total{kind="completion",model="cloud"} 5.0' in metrics
    assert 'reconciler_gateway_requests_total{code="200",model="cloud"} 1.0' in metrics


def test_streaming_from_the_endpoint_is_relayed_with_its_usage(gw: Harness, cloud: Hosted) -> None:
    gw.write(remote("cloud", cloud.endpoint))
    stream = gw.client().chat.completions.create(
        model="cloud",
        messages=[{"role": "user", "content": "a b"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    words = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(words) == "cloud-a says hello to you"
    (seen,) = cloud.chats()
    assert seen["stream"] is True and seen["model"] == UPSTREAM_MODEL
    metrics = gw.metrics()
    assert 'reconciler_gateway_tokens_total{kind="completion",model="cloud"} 5.0' in metrics
    assert 'reconciler_gateway_time_to_first_byte_seconds_count{model="cloud"} 1.0' in metrics


def test_the_endpoints_own_errors_are_passed_through(
    tmp_path: Path, cloud: Hosted, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_env(monkeypatch, cloud)
    # a key the endpoint does not know, bound to its host: the gateway sends it
    monkeypatch.setenv("RECONCILER_SECRET_WRONG", "sk-revoked-000000000000000000000000")
    monkeypatch.setenv("RECONCILER_SECRET_WRONG_HOSTS", "127.0.0.1")
    with harness(tmp_path) as gw:
        gw.write(remote("cloud", cloud.endpoint, key_env="RECONCILER_SECRET_WRONG"))
        with pytest.raises(openai.AuthenticationError) as refused:
            ask(gw.client(), "cloud")
        assert refused.value.body["code"] == "invalid_api_key"
        assert refused.value.response.headers["X-Reconciler-Model"] == "cloud"
        assert "Incorrect API key" in refused.value.body["message"]
        # a route the endpoint does not have: its own 404 as it came, not one of the gateway's
        gw.write(remote("cloud", cloud.endpoint))
        response = gw.post("/v1/completions", {"model": "cloud", "prompt": "x"})
        assert response.status_code == 404 and response.text == "404: Not Found"
        assert response.headers["X-Reconciler-Model"] == "cloud"


def test_a_key_the_host_does_not_bind_to_the_endpoint_is_withheld(
    tmp_path: Path, cloud: Hosted, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_env(monkeypatch, cloud, bound=False)
    with harness(tmp_path) as gw:
        gw.write(remote("cloud", cloud.endpoint))
        response = gw.post("/v1/chat/completions", {"model": "cloud", "messages": []})
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "remote_key_withheld"
        assert CLOUD_KEY not in response.text
        assert cloud.chats() == []  # nothing was sent, the key least of all
        log = (tmp_path / "gateway.log").read_text()
        assert "remote model cloud: key withheld" in log and CLOUD_KEY not in log


def test_an_endpoint_whose_certificate_does_not_verify_is_not_used(
    tmp_path: Path, cloud: Hosted, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_env(monkeypatch, cloud)
    monkeypatch.delenv("RECONCILER_REMOTE_CA_FILE")  # the test's CA is not the system's
    with harness(tmp_path) as gw:
        gw.write(remote("cloud", cloud.endpoint))
        response = gw.post("/v1/chat/completions", {"model": "cloud", "messages": []})
        assert response.status_code == 503
        assert "CERTIFICATE_VERIFY_FAILED" in response.json()["error"]["message"]
        assert cloud.chats() == []


def test_an_endpoint_that_is_down_fails_over_to_its_fallback(gw: Harness) -> None:
    local = gw.upstream(Upstream.fast(name="small-engine"))
    down = f"https://127.0.0.1:{free_port()}/v1"
    gw.write(remote("cloud", down, fallback="small"), model("small", local.url))
    raw = ask(gw.client(), "cloud")
    assert raw.headers["X-Reconciler-Model"] == "small"
    assert raw.parse().model == "small-engine"
    assert 'reconciler_gateway_failovers_total{model="cloud",reason="connection"}' in gw.metrics()


def test_a_local_model_that_is_not_ready_is_served_by_its_remote_fallback(
    gw: Harness, cloud: Hosted
) -> None:
    gw.write(model("big", status="preempted", fallback="cloud"), remote("cloud", cloud.endpoint))
    raw = ask(gw.client(), "big")
    assert raw.headers["X-Reconciler-Model"] == "cloud"
    assert raw.parse().system_fingerprint == "cloud-a"
    # the remote model in error: 503 with Retry-After, as for any model without a fallback
    gw.write(
        model("big", status="preempted", fallback="cloud"), remote("cloud", "", status="error")
    )
    response = gw.post("/v1/chat/completions", {"model": "big", "messages": []})
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0


def test_a_starting_model_is_served_by_its_remote_fallback_not_its_local_one(
    gw: Harness, cloud: Hosted
) -> None:
    # while a local model starts, a hosted fallback answers at once; a local fallback does not
    # (the request waits: starting one would take the GPU the model is starting on)
    gw.write(model("big", status="starting", fallback="cloud"), remote("cloud", cloud.endpoint))
    client = gw.client(timeout=10)  # a request that waits for the start times out
    raw = ask(client, "big")
    assert raw.headers["X-Reconciler-Model"] == "cloud"
    assert raw.parse().system_fingerprint == "cloud-a"
    local = gw.upstream(Upstream.fast(name="small-engine"))
    gw.write(model("big", status="starting", fallback="small"), model("small", local.url))
    with pytest.raises(openai.APITimeoutError):
        ask(client, "big")


def inflight_of(gw: Harness, model_id: str) -> dict[str, int]:
    return gw.service.inflight()["models"][model_id]


def wait_until(condition: object, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_max_concurrency_holds_the_rest_in_the_queue(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = Hosted(tmp_path, ca, "cloud-slow", delay_ms=1500)
    gateway_env(monkeypatch, slow)
    try:
        with harness(tmp_path) as gw:
            gw.write(remote("cloud", slow.endpoint, max_concurrency=1), queue_timeout_s=60)
            client = gw.client()
            seen: list[dict[str, int]] = []
            with ThreadPoolExecutor(3) as pool:
                futures = [pool.submit(ask, client, "cloud") for _ in range(3)]
                wait_until(lambda: inflight_of(gw, "cloud")["queued"] == 2, "two never queued")
                while not all(f.done() for f in futures):
                    seen.append(inflight_of(gw, "cloud"))
                    time.sleep(0.05)
                answers = [f.result() for f in futures]
            assert all(a.headers["X-Reconciler-Model"] == "cloud" for a in answers)
            assert max(s["inflight"] for s in seen) == 1
            assert len(slow.chats()) == 3
            # a wait for a slot is bounded by queue_timeout_s like any wait in the queue
            gw.write(remote("cloud", slow.endpoint, max_concurrency=1), queue_timeout_s=0.2)
            holder = threading.Thread(target=ask, args=(client, "cloud"))
            holder.start()
            wait_until(lambda: inflight_of(gw, "cloud")["inflight"] == 1, "not sent")
            response = gw.post("/v1/chat/completions", {"model": "cloud", "messages": []})
            holder.join(30)
            assert response.status_code == 503 and "Retry-After" in response.headers
            assert "max_concurrency" in response.json()["error"]["message"]
    finally:
        slow.stop()


def test_overflow_past_queue_over_goes_to_the_remote_model(gw: Harness, cloud: Hosted) -> None:
    """queue_over 1: two requests wait for the local engine (sent, no byte back yet); the third
    and fourth go to the cloud; every request is answered once, by one of them."""
    local = gw.upstream(Upstream.fast(name="local-engine", chunks=1, delay_ms=4000))
    burst = OverflowRoute("cloud", 1)
    gw.write(model("local", local.url, overflow=burst), remote("cloud", cloud.endpoint))
    body = {"model": "local", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    asked_before = local.stats()["requests"]  # its health checks and this very question

    def send() -> httpx.Response:
        response = httpx.post(f"{gw.base}/v1/chat/completions", json=body, timeout=30)
        return response

    answers: list[httpx.Response] = []
    threads = []
    for count in range(1, 5):
        thread = threading.Thread(target=lambda: answers.append(send()))
        thread.start()
        threads.append(thread)
        if count <= 2:
            wait_until(lambda c=count: inflight_of(gw, "local")["inflight"] == c, "not sent")
        else:
            wait_until(lambda c=count: len(answers) == c - 2, "the cloud did not answer")
    for thread in threads:
        thread.join(30)
    who = sorted(a.headers["X-Reconciler-Model"] for a in answers)
    assert who == ["cloud", "cloud", "local", "local"]
    assert all(a.status_code == 200 and "[DONE]" in a.text for a in answers)
    assert local.stats()["requests"] - asked_before - 1 == 2 and len(cloud.chats()) == 2
    assert 'reconciler_gateway_overflow_total{model="local",to="cloud"} 2.0' in gw.metrics()

"""The gateway process with the real `openai` client: routing, streaming, failover, queueing,
fallback, bad input, drain and metrics (upstreams: the fast OpenAI-shaped server and the vLLM
stand-in, real processes on loopback ports)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from components import needs
from gateway_support import KEY, KEY_ENV, Harness, Upstream, harness, model

from reconciler.gateway.routes import ApiKey


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Harness]:
    with harness(tmp_path) as h:
        yield h


def chat(client: openai.OpenAI, name: str):
    return client.chat.completions.with_raw_response.create(
        model=name, messages=[{"role": "user", "content": "hi"}]
    )


def test_routes_by_model_and_alias_and_lists_models(gw: Harness) -> None:
    a = gw.upstream(Upstream.fast(name="engine-a"))
    b = gw.upstream(Upstream.fast(name="engine-b"))
    gw.write(
        model("alpha", a.url, aliases=("gpt-4o",)),
        model("beta", b.url),
        model("off", status="disabled", enabled=False),
        model("warming", status="starting"),
    )
    client = gw.client()
    raw = chat(client, "alpha")
    assert raw.headers["X-Reconciler-Model"] == "alpha"
    assert raw.parse().model == "engine-a"
    raw = chat(client, "gpt-4o")
    assert (raw.headers["X-Reconciler-Model"], raw.parse().model) == ("alpha", "engine-a")
    assert chat(client, "beta").parse().choices[0].message.content == "hello from the upstream"
    assert client.embeddings.create(model="beta", input="x").data[0].embedding == [0.1, 0.2, 0.3]
    assert client.completions.create(model="beta", prompt="x").choices[0].text == " hello"

    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"alpha", "gpt-4o", "beta", "warming"}
    assert listed["warming"].model_extra["status"] == "starting"
    assert listed["gpt-4o"].model_extra["root"] == "alpha"

    with pytest.raises(openai.NotFoundError) as unknown:
        chat(client, "nope")
    assert unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as disabled:
        chat(client, "off")
    assert "disabled" in disabled.value.body["message"]


def test_streaming_is_relayed_chunk_by_chunk(gw: Harness) -> None:
    up = gw.upstream(Upstream.fast(chunks=5, delay_ms=300))
    gw.write(model("m", up.url))
    stream = gw.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    arrivals, texts = [], []
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices:
            texts.append(chunk.choices[0].delta.content)
    assert texts == [f" tok{i}" for i in range(5)]
    # a buffering proxy would deliver everything at once, at the end
    assert arrivals[-1] - arrivals[0] > 1.0, arrivals
    metrics = gw.metrics()
    assert 'reconciler_gateway_tokens_total{kind="completion",model="m"} 5.0' in metrics
    assert 'reconciler_gateway_time_to_first_byte_seconds_count{model="m"} 1.0' in metrics


def test_client_disconnect_cancels_the_upstream_stream(gw: Harness) -> None:
    up = gw.upstream(Upstream.fast(chunks=100, delay_ms=100))
    gw.write(model("m", up.url))
    body = {"model": "m", "stream": True, "messages": []}
    with httpx.stream("POST", f"{gw.base}/v1/chat/completions", json=body, timeout=10) as r:
        next(r.iter_raw())
    deadline = time.monotonic() + 5
    while up.stats()["streams_cut"] < 1:
        assert time.monotonic() < deadline, "the upstream kept streaming to nobody"
        time.sleep(0.05)
    assert gw.service.inflight()["instances"][up.url]["inflight"] == 0


@pytest.mark.parametrize("kind", ["vllm-standin", "fast-upstream"])
def test_failover_when_an_instance_is_killed_under_load(gw: Harness, kind: str) -> None:
    start = (lambda: Upstream.vllm("m")) if kind == "vllm-standin" else Upstream.fast
    one, two = gw.upstream(start()), gw.upstream(start())
    gw.write(model("m", one.url, two.url))
    client = gw.client()
    done = threading.Semaphore(0)

    def ask(i: int) -> str:
        answer = client.completions.create(model="m", prompt=f"request {i}", max_tokens=4)
        done.release()
        return answer.choices[0].text

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(200)]
        for _ in range(60):
            done.acquire()
        one.kill()
        texts = [f.result() for f in futures]  # any failed request raises here
    assert len(texts) == 200 and all(t.strip() for t in texts)
    served = {u: i["served"] for u, i in gw.service.inflight()["instances"].items()}
    assert served[one.url] > 0 and served[two.url] > 0, served
    assert served[two.url] > served[one.url]
    assert 'reconciler_gateway_failovers_total{model="m",reason="connection"}' in gw.metrics()


def test_requests_queue_while_the_model_starts(gw: Harness) -> None:
    gw.write(model("m", status="starting"), queue_timeout_s=30)
    answers: list[object] = []
    waiter = threading.Thread(target=lambda: answers.append(chat(gw.client(), "m")))
    waiter.start()
    deadline = time.monotonic() + 5
    while gw.service.inflight()["models"]["m"]["queued"] < 1:
        assert time.monotonic() < deadline and waiter.is_alive()
        time.sleep(0.05)
    up = gw.upstream(Upstream.fast())
    gw.write(model("m", up.url), queue_timeout_s=30)
    waiter.join(10)
    assert answers and answers[0].headers["X-Reconciler-Model"] == "m"
    assert 'reconciler_gateway_cold_start_seconds_count{model="m"} 1.0' in gw.metrics()


def test_full_queue_429_and_queue_timeout_503(gw: Harness) -> None:
    gw.write(model("m", status="starting"), queue_timeout_s=1.5, max_queue=1)
    first = threading.Thread(target=lambda: gw.post("/v1/completions", {"model": "m"}))
    first.start()
    deadline = time.monotonic() + 5
    while gw.service.inflight()["models"]["m"]["queued"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(openai.RateLimitError) as full:
        chat(gw.client(), "m")
    assert full.value.body["code"] == "queue_full"
    assert full.value.response.headers["Retry-After"] == "10"  # the table's retry_after_s
    first.join()
    started = time.monotonic()
    timed_out = gw.post("/v1/completions", {"model": "m"})
    assert timed_out.status_code == 503 and time.monotonic() - started >= 1.4
    assert timed_out.headers["Retry-After"] == "10"
    assert timed_out.json()["error"]["code"] == "queue_timeout"


def test_preempted_model_uses_its_running_fallback_else_503(gw: Harness) -> None:
    small = gw.upstream(Upstream.fast(name="small-engine"))
    gw.write(model("big", status="preempted", fallback="small"), model("small", small.url))
    raw = chat(gw.client(), "big")
    assert raw.headers["X-Reconciler-Model"] == "small"
    assert raw.parse().model == "small-engine"

    gw.write(model("big", status="preempted"), model("small", small.url))
    response = gw.post("/v1/chat/completions", {"model": "big", "messages": []})
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "model_unavailable"


def test_dead_instance_fails_over_to_the_fallback(gw: Harness) -> None:
    dead = gw.upstream(Upstream.fast())
    dead.kill()
    small = gw.upstream(Upstream.fast(name="small-engine"))
    gw.write(model("big", dead.url, fallback="small"), model("small", small.url))
    raw = chat(gw.client(), "big")
    assert raw.headers["X-Reconciler-Model"] == "small"
    assert 'reconciler_gateway_failovers_total{model="big",reason="connection"}' in gw.metrics()


def test_failure_after_the_first_byte_ends_the_stream_with_an_error_event(gw: Harness) -> None:
    up = gw.upstream(Upstream.fast(chunks=50, delay_ms=100))
    gw.write(model("m", up.url))
    stream = gw.client().chat.completions.create(model="m", messages=[], stream=True)
    with pytest.raises(openai.APIError, match="mid-stream"):
        for index, _chunk in enumerate(stream):
            if index == 1:
                up.kill()


def test_bad_input_gets_openai_errors_and_the_gateway_keeps_serving(gw: Harness) -> None:
    up = gw.upstream(Upstream.fast())
    keys = (ApiKey("ci", KEY_ENV),)
    gw.write(model("m", up.url), max_body_bytes=2000, api_keys=keys)
    auth = {"Authorization": f"Bearer {KEY}"}
    cases = [
        (gw.post("/v1/chat/completions", b"{not json", **auth), 400, "invalid_json"),
        (gw.post("/v1/chat/completions", {"messages": []}, **auth), 400, "missing_model"),
        (gw.post("/v1/chat/completions", {"model": "m", "x": "y" * 3000}, **auth), 413, None),
        (gw.post("/v1/chat/completions", {"model": "m"}), 401, "invalid_api_key"),
        (gw.post("/v1/chat/completions", {"model": "m"}, Authorization="Bearer no"), 401, None),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["message"] and error["type"]
        assert code is None or error["code"] == code
        assert "X-Reconciler-Model" in response.headers
    with pytest.raises(openai.AuthenticationError):
        chat(gw.client(api_key="wrong"), "m")
    assert chat(gw.client(api_key=KEY), "m").headers["X-Reconciler-Model"] == "m"
    assert 'reconciler_gateway_key_requests_total{key="ci"} 4.0' in gw.metrics()
    assert KEY not in gw.metrics()


def test_draining_instance_gets_no_new_requests_and_reports_in_flight(gw: Harness) -> None:
    slow, other = gw.upstream(Upstream.fast(chunks=20, delay_ms=150)), gw.upstream(Upstream.fast())
    gw.write(model("m", slow.url))
    body = {"model": "m", "stream": True, "messages": []}
    with httpx.stream("POST", f"{gw.base}/v1/chat/completions", json=body, timeout=10) as r:
        chunks = r.iter_raw()
        next(chunks)
        generation = gw.write(model("m", slow.url, other.url, draining=(slow.url,)))
        for _ in range(5):
            assert chat(gw.client(), "m").headers["X-Reconciler-Model"] == "m"
        report = gw.service.inflight()["instances"]
        assert report[slow.url]["inflight"] == 1 and report[slow.url]["draining"]
        assert report[other.url]["served"] == 5 and report[slow.url]["served"] == 1
        assert not gw.service.wait_drained([slow.url], generation, timeout_s=0.3)
        for _ in chunks:
            pass
    assert gw.service.wait_drained([slow.url], generation, timeout_s=5)


@needs(
    "promtool",
    "apt-get install -y --no-install-recommends prometheus",
    shutil.which("promtool") is not None,
)
def test_metrics_pass_promtool(gw: Harness) -> None:
    up = gw.upstream(Upstream.fast())
    gw.write(model("m", up.url))
    chat(gw.client(), "m")
    gw.post("/v1/chat/completions", {"model": "nope"})
    text = gw.metrics()
    for name in ("requests_total", "request_duration_seconds", "inflight_requests"):
        assert f"reconciler_gateway_{name}" in text
    assert 'reconciler_gateway_requests_total{code="404",model="unknown"} 1.0' in text
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr


def test_service_restarts_a_dead_gateway_with_the_table_on_disk(gw: Harness) -> None:
    up = gw.upstream(Upstream.fast())
    generation = gw.write(model("m", up.url))
    assert not gw.service.ensure_running()
    assert gw.service.process is not None
    gw.service.process.kill()
    gw.service.process.wait()
    assert gw.service.ensure_running()
    assert gw.service.inflight()["generation"] == generation
    assert chat(gw.client(), "m").headers["X-Reconciler-Model"] == "m"


def test_before_its_first_routing_table_the_gateway_says_retry_not_unknown(gw: Harness) -> None:
    # a daemon starting up: the gateway answers before the first pass has published routes
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    early = httpx.post(f"{gw.base}/v1/chat/completions", json=body, timeout=10)
    assert early.status_code == 503, early.text
    assert early.headers["Retry-After"].isdigit()
    assert early.json()["error"]["code"] == "routes_not_loaded"
    listed = httpx.get(f"{gw.base}/v1/models", timeout=10)
    assert listed.status_code == 503 and listed.json()["error"]["code"] == "routes_not_loaded"

    up = gw.upstream(Upstream.fast(name="m"))
    gw.write(model("m", up.url))
    assert httpx.get(f"{gw.base}/v1/models", timeout=10).json()["data"][0]["id"] == "m"
    assert httpx.post(f"{gw.base}/v1/chat/completions", json=body, timeout=10).status_code == 200
    unknown = httpx.post(
        f"{gw.base}/v1/chat/completions", json={**body, "model": "nope"}, timeout=10
    )
    assert unknown.status_code == 404

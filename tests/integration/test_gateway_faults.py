"""The gateway in front of engines that fail, and what clients and /metrics see, exactly.

The engines are the vLLM stand-in (tests/fakes/fake_vllm.py), real processes on loopback ports,
which answer 404 to a `model` they do not serve (as vLLM does), can be told to answer every
request with 502 or 503, and hold a stream after its first chunk until the test opens a gate
file; and the fast OpenAI-shaped upstream, killed to stand for an engine that died. Each test
here was checked to fail with a fault of tests/mutants/mutants.py injected.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from gateway_support import Harness, Upstream, harness, model
from prometheus_client.parser import text_string_to_metric_families

from reconciler.gateway.table import DOWN_FOR_S

CHAT = [{"role": "user", "content": "hi"}]
WAIT_S = 30.0
"""a generous bound on anything the gateway does by itself (the machine may be busy)"""


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Harness]:
    with harness(tmp_path) as h:
        yield h


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series of a Prometheus exposition; None when it is not there."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None


def failovers(gw: Harness) -> dict[tuple[str, str], float]:
    """(model, reason) -> count, for every failover series there is."""
    counts = {}
    for family in text_string_to_metric_families(gw.metrics()):
        for found in family.samples:
            if found.name == "reconciler_gateway_failovers_total":
                counts[(found.labels["model"], found.labels["reason"])] = found.value
    return counts


def inflight(gw: Harness, model_id: str) -> float | None:
    return sample(gw.metrics(), "reconciler_gateway_inflight_requests", model=model_id)


def wait_inflight(gw: Harness, model_id: str, value: float) -> None:
    deadline = time.monotonic() + WAIT_S
    while (seen := inflight(gw, model_id)) != value:
        assert time.monotonic() < deadline, f"in-flight gauge stays {seen}, not {value}"
        time.sleep(0.05)


def chat(client: openai.OpenAI, name: str):
    return client.chat.completions.with_raw_response.create(model=name, messages=CHAT)


@pytest.mark.parametrize("status", [502, 503])
def test_an_engine_answering_502_or_503_fails_over_to_another_instance(
    gw: Harness, status: int
) -> None:
    broken = gw.upstream(Upstream.vllm("m", ANSWER_STATUS=str(status)))
    good = gw.upstream(Upstream.vllm("m"))
    gw.write(model("m", broken.url, good.url))
    client = gw.client()
    for _ in range(6):
        raw = chat(client, "m")  # a 502/503 passed on raises here
        assert raw.http_response.status_code == 200
        assert raw.parse().choices[0].message.content.strip()
    refused = broken.standin_stats()["answered"].get(str(status), 0)
    assert refused >= 1, "the broken instance was never tried: this test tested nothing"
    assert good.standin_stats()["answered"] == {"200": 6}
    # each refusal is one failover, under the status it was for; the 6 answers are 200s
    assert failovers(gw) == {("m", f"http_{status}"): refused}
    text = gw.metrics()
    assert sample(text, "reconciler_gateway_requests_total", model="m", code="200") == 6
    assert sample(text, "reconciler_gateway_requests_total", model="m", code=str(status)) is None
    assert inflight(gw, "m") == 0


def test_every_instance_dead_is_a_503_with_retry_after_in_openai_form(gw: Harness) -> None:
    one, two = gw.upstream(Upstream.fast()), gw.upstream(Upstream.fast())
    one.kill()
    two.kill()
    gw.write(model("m", one.url, two.url))
    response = gw.post("/v1/chat/completions", {"model": "m", "messages": CHAT})
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["type"] == "service_unavailable" and error["code"] and error["message"]
    assert response.headers["X-Reconciler-Model"] == "m"
    # each dead instance was tried once, then the client was told to come back later
    counted = failovers(gw)
    assert set(counted) == {("m", "connection")} and 1 <= counted[("m", "connection")] <= 2
    with pytest.raises(openai.InternalServerError) as raised:
        chat(gw.client(), "m")
    assert raised.value.status_code == 503
    assert inflight(gw, "m") == 0


def test_a_dead_instance_is_tried_after_the_live_one_until_it_may_have_come_back(
    gw: Harness,
) -> None:
    dead, live = gw.upstream(Upstream.fast()), gw.upstream(Upstream.fast(name="live"))
    dead.kill()
    gw.write(model("m", dead.url, live.url))  # the dead one first: round-robin starts there
    client = gw.client()
    began = time.monotonic()
    for _ in range(20):
        assert chat(client, "m").parse().model == "live"
    elapsed = time.monotonic() - began
    # it failed at most once per DOWN_FOR_S: after a failure it goes last for that long
    tries = failovers(gw).get(("m", "connection"), 0)
    assert 1 <= tries <= 1 + int(elapsed / DOWN_FOR_S), (tries, elapsed)
    assert gw.service.inflight()["instances"][live.url]["served"] == 20


def test_the_engine_is_asked_for_its_own_name_whatever_the_client_called_the_model(
    gw: Harness,
) -> None:
    up = gw.upstream(Upstream.vllm("org/weights-7b", served_name="weights-7b-instruct"))
    gw.write(model("m", up.url, aliases=("gpt-4o",), served_name="weights-7b-instruct"))
    # the stand-in checks the name, as vLLM does: asked by the client's name, it refuses
    direct = httpx.post(
        f"{up.url}/v1/chat/completions", json={"model": "m", "messages": CHAT}, timeout=10
    )
    assert direct.status_code == 404 and "does not exist" in direct.json()["message"]
    client = gw.client()
    for name in ("m", "gpt-4o"):
        raw = chat(client, name)
        assert raw.headers["X-Reconciler-Model"] == "m"
        assert raw.parse().model == "weights-7b-instruct"
    stream = client.completions.create(model="gpt-4o", prompt="x", stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices).strip()
    models = up.standin_stats()["models"]
    assert models == ["m", *["weights-7b-instruct"] * 3]


def test_a_stream_is_relayed_chunk_by_chunk_and_in_flight_counts_it(
    gw: Harness, tmp_path: Path
) -> None:
    gate = tmp_path / "second-chunk"
    up = gw.upstream(Upstream.vllm("m", STREAM_GATE=str(gate)))
    gw.write(model("m", up.url))
    body = {"model": "m", "messages": CHAT, "stream": True}
    texts: list[str] = []
    timeout = httpx.Timeout(WAIT_S)  # a buffering gateway never sends the first chunk: fails
    try:
        with httpx.stream(
            "POST", f"{gw.base}/v1/chat/completions", json=body, timeout=timeout
        ) as response:
            assert response.status_code == 200
            events = (line[6:] for line in response.iter_lines() if line.startswith("data: "))
            first = json.loads(next(events))
            texts.append(first["choices"][0]["delta"]["content"])
            # the stand-in sends nothing more until the gate opens: the client has the first
            # chunk while the engine still holds the second
            assert not gate.exists()
            assert inflight(gw, "m") == 1
            gate.touch()
            for event in events:
                if event == "[DONE]":
                    break
                texts.append(json.loads(event)["choices"][0]["delta"]["content"])
    finally:
        gate.touch()  # never leave the stand-in waiting
    assert len(texts) == 3 and texts[0] == " stand-in", texts
    wait_inflight(gw, "m", 0)
    text = gw.metrics()
    assert sample(text, "reconciler_gateway_time_to_first_byte_seconds_count", model="m") == 1
    assert sample(text, "reconciler_gateway_requests_total", model="m", code="200") == 1


def test_requests_go_to_the_instance_with_fewer_in_flight(gw: Harness, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    one = gw.upstream(Upstream.vllm("m", STREAM_GATE=str(gate)))
    two = gw.upstream(Upstream.vllm("m", STREAM_GATE=str(gate)))
    # the least-outstanding rule (the same chat under prefix routing would stay where it went)
    gw.write(model("m", one.url, two.url, routing="least_outstanding"))
    body = {"model": "m", "messages": CHAT, "stream": True}
    try:
        with httpx.stream(
            "POST", f"{gw.base}/v1/chat/completions", json=body, timeout=WAIT_S
        ) as response:
            lines = response.iter_lines()  # kept: a dropped iterator closes the stream
            next(lines)  # one instance now has a request in flight
            busy = [u for u, i in gw.service.inflight()["instances"].items() if i["inflight"]]
            assert len(busy) == 1
            client = gw.client()
            for _ in range(4):
                chat(client, "m")
            served = {u: i["served"] for u, i in gw.service.inflight()["instances"].items()}
            idle = two.url if busy == [one.url] else one.url
            assert served == {busy[0]: 1, idle: 4}, served
            assert inflight(gw, "m") == 1
            gate.touch()
            for _ in lines:
                pass
    finally:
        gate.touch()
    wait_inflight(gw, "m", 0)


def test_a_draining_instance_gets_no_new_request_even_when_it_is_the_least_busy(
    gw: Harness, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    busy = gw.upstream(Upstream.vllm("m", STREAM_GATE=str(gate)))
    leaving = gw.upstream(Upstream.vllm("m"))
    gw.write(model("m", busy.url))
    body = {"model": "m", "messages": CHAT, "stream": True}
    try:
        with httpx.stream(
            "POST", f"{gw.base}/v1/chat/completions", json=body, timeout=WAIT_S
        ) as response:
            lines = response.iter_lines()
            next(lines)  # `busy` has a request in flight, `leaving` none
            gw.write(model("m", busy.url, leaving.url, draining=(leaving.url,)))
            client = gw.client()
            for _ in range(4):
                assert chat(client, "m").parse().choices[0].message.content
            assert leaving.standin_stats()["answered"] == {}
            assert busy.standin_stats()["answered"] == {"200": 5}
            gate.touch()
            for _ in lines:
                pass
    finally:
        gate.touch()

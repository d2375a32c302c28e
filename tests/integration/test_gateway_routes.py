"""The routing table the daemon feeds the gateway: built from desired state and the state file's
records (pure), published by GatewayService, and drained before an engine stops."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
from gateway_support import Upstream, harness

from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.spec import ModelSpec
from reconciler.gateway.framing import ChunkDecoder
from reconciler.gateway.routes import GatewaySettings, build_routes, parse_routes
from reconciler.gateway.service import settings_from


def spec(model_id: str, **fields: object) -> ModelSpec:
    base = {"id": model_id, "framework": "llama_cpp", "model_path": "/m.gguf"}
    return ModelSpec.model_validate({**base, **fields})


def desired(*specs: ModelSpec) -> DesiredState:
    return DesiredState({s.id: s for s in specs}, ClusterSpec())


def test_each_model_gets_the_status_that_decides_its_requests() -> None:
    state = desired(
        spec("up", fallback="small"),
        spec("small"),
        spec("booting"),
        spec("crashed"),
        spec("broken"),
        spec("pushed-out"),
        spec("no-room"),
        spec("off", enabled=False),
        spec("hub", framework="vllm", model_path="Qwen/Qwen2-7B"),
    )
    records = {
        "up": InstanceRecord("up", Status.running, port=8101),
        "small": InstanceRecord("small", Status.running, port=8102),
        "booting": InstanceRecord("booting", Status.starting, port=8103),
        "crashed": InstanceRecord("crashed", Status.error, next_retry_at=5.0),
        "broken": InstanceRecord("broken", Status.error, given_up=True),
        "pushed-out": InstanceRecord("pushed-out", Status.preempted),
        "off": InstanceRecord("off", Status.stopped),
    }
    routes = build_routes(
        state, records, unschedulable={"no-room"}, draining={"http://127.0.0.1:8102"}
    )
    status = {m.id: m.status for m in routes.models.values()}
    assert status == {
        "up": "running",
        "small": "running",
        "booting": "starting",
        "crashed": "starting",
        "broken": "error",
        "pushed-out": "preempted",
        "no-room": "unschedulable",
        "off": "disabled",
        "hub": "starting",
    }
    up, small = routes.models["up"], routes.models["small"]
    assert [i.url for i in up.instances] == ["http://127.0.0.1:8101"] and up.fallback == "small"
    assert small.instances[0].draining
    assert routes.models["booting"].instances == ()
    assert routes.models["hub"].served_name == "Qwen/Qwen2-7B"  # what vLLM answers to
    assert parse_routes(routes.to_json()) == routes


def test_published_table_is_served_and_drained_before_a_stop(tmp_path: Path) -> None:
    with harness(tmp_path / "gw") as gw:
        slow = gw.upstream(Upstream.fast(chunks=6, delay_ms=150))
        state = desired(spec("m"))
        records = {"m": InstanceRecord("m", Status.running, port=slow.port)}
        first = gw.service.publish(state, records)
        assert gw.service.publish(state, records) == first  # unchanged: not rewritten
        assert gw.service.wait_drained([], first, timeout_s=5)
        body = {"model": "m", "stream": True, "messages": []}
        with httpx.stream("POST", f"{gw.base}/v1/chat/completions", json=body, timeout=10) as r:
            chunks = r.iter_raw()
            next(chunks)
            drained: list[bool] = []
            waiter = threading.Thread(target=lambda: drained.append(gw.service.drain([slow.url])))
            waiter.start()
            waiter.join(0.3)
            assert waiter.is_alive(), "drain returned while a request was in flight"
            report = gw.service.inflight()["instances"][slow.url]
            assert report["draining"] and report["inflight"] == 1
            for _ in chunks:
                pass
        waiter.join(5)
        assert drained == [True]
        # new requests wait for a ready instance instead of reaching the draining one
        assert gw.service.inflight()["models"]["m"]["status"] == "running"
        records = {"m": InstanceRecord("m", Status.starting, port=slow.port)}
        gw.service.publish(state, records)
        assert not gw.service.draining  # the stopped engine's mark went with it


def test_chunked_bodies_decode_the_same_however_the_bytes_arrive() -> None:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"data: a\n\n", b"x" * 300, b"z"))
    wire = body + b"0\r\n\r\n"
    for step in (1, 2, 7, 64, len(wire)):
        buffer, out, decoder = bytearray(), b"", ChunkDecoder()
        for i in range(0, len(wire), step):
            buffer += wire[i : i + step]
            out += decoder.feed(buffer)
        expected = (b"data: a\n\n" + b"x" * 300 + b"z", True, b"")
        assert (out, decoder.finished, bytes(buffer)) == expected


def test_the_idle_timeout_of_cluster_yaml_reaches_the_gateways_table() -> None:
    cluster = ClusterSpec.model_validate({"gateway": {"upstream_idle_timeout_s": 42}})
    settings = settings_from(cluster, GatewaySettings())
    state = DesiredState({}, cluster)
    table = parse_routes(build_routes(state, {}, settings).to_json())
    assert table.settings.upstream_idle_timeout_s == 42
    assert ClusterSpec().gateway.upstream_idle_timeout_s == 600  # long generations never hit it

"""On-demand models through `reconciler run`: started by their first request, stopped when idle,
swapped on one GPU that holds one of them at a time.

Real daemon, real gateway process, real engine processes (the vLLM stand-in, on a declared GPU),
the real `openai` client. Timeouts are generous; nothing asserts how fast anything is.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
from apply_support import stand_in, wait_for
from daemon_support import Daemon, running_daemon

CHAT = [{"role": "user", "content": "hello"}]
GPU = [{"index": 0, "name": "Simulated", "memory_mb": 2000}]
IDLE_S = 4


def on_demand(model_id: str, **fields: Any) -> dict[str, Any]:
    return stand_in(model_id, activation="on_demand", **fields)


def chat(daemon: Daemon, model: str) -> str:
    client = openai.OpenAI(
        base_url=daemon.gateway_url, api_key="unused", max_retries=0, timeout=120
    )
    raw = client.chat.completions.with_raw_response.create(model=model, messages=CHAT, max_tokens=4)
    assert raw.headers["x-reconciler-model"] == model
    answer = raw.parse().choices[0].message.content
    assert answer
    return answer


def listed_status(daemon: Daemon, model: str) -> str | None:
    client = openai.OpenAI(base_url=daemon.gateway_url, api_key="unused", max_retries=0)
    try:
        listed = client.models.list().data
    except openai.APIStatusError as exc:  # 503 until the gateway has the first routing table
        assert exc.status_code == 503, exc
        return None
    for entry in listed:
        if entry.id == model:
            return entry.model_extra.get("status") if entry.model_extra else None
    return None


def starts(daemon: Daemon, model: str) -> int:
    return len(daemon.host.events("start", model))


def test_a_request_starts_an_on_demand_model_and_idleness_stops_it(tmp_path: Path) -> None:
    models = [on_demand("lazy", idle_timeout_s=5), stand_in("always")]
    with running_daemon(tmp_path / "host", models, gpus=GPU) as daemon:
        daemon.wait_statuses({"always": "running"})
        assert starts(daemon, "lazy") == 0
        assert daemon.statuses().get("lazy", "stopped") == "stopped"
        assert wait_for(lambda: listed_status(daemon, "lazy") == "cold", 20, 0.2), daemon.log()
        models_api = {m["id"]: m for m in daemon.json("/api/v1/models")}
        assert models_api["lazy"]["activation"] == "on_demand"
        assert models_api["lazy"]["demand"] == "idle"

        chat(daemon, "lazy")  # queued while cold, answered once it runs
        assert daemon.statuses()["lazy"] == "running"
        assert starts(daemon, "lazy") == 1
        seen = httpx.get(f"http://127.0.0.1:{daemon.gateway_port}/internal/inflight").json()
        assert seen["models"]["lazy"]["wanted"] is False
        assert seen["models"]["lazy"]["last_request_at"] is not None  # the idle clock
        assert seen["models"]["always"]["last_request_at"] is None  # nobody asked for it

        daemon.wait_statuses({"lazy": "stopped"}, timeout_s=60)
        stop = daemon.host.events("stop", "lazy")
        assert stop and "idle" in stop[-1]["message"], stop
        assert daemon.statuses()["always"] == "running"
        chat(daemon, "lazy")  # and a later request brings it back
        assert starts(daemon, "lazy") == 2


def test_two_on_demand_models_share_one_gpu_by_swapping(tmp_path: Path) -> None:
    # 1500 MiB each on a 2000 MiB GPU: one at a time. Each takes a moment to load, so that
    # requests can arrive while the other one loads.
    mib = {"resource_requirements": {"gpu_count": 1, "gpu_memory_mb": 1500}}
    slow = {"env": {"FAKE_VLLM_STARTUP_S": "1.5"}}
    models = [on_demand("alpha", **mib, **slow), on_demand("beta", **mib, **slow)]
    with running_daemon(tmp_path / "host", models, gpus=GPU) as daemon:
        daemon.wait_ready()
        assert wait_for(lambda: listed_status(daemon, "beta") == "cold", 20, 0.2), daemon.log()
        for model in ("alpha", "beta", "alpha", "beta"):
            chat(daemon, model)
        assert (starts(daemon, "alpha"), starts(daemon, "beta")) == (2, 2)

        # beta runs; a request for alpha swaps it in; while alpha loads, three requests for
        # beta arrive: they wait, and are served together after one swap back
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(chat, daemon, "alpha")
            loading = wait_for(lambda: daemon.statuses().get("alpha") == "starting", 60, 0.05)
            assert loading, daemon.log()
            waiting = [pool.submit(chat, daemon, "beta") for _ in range(3)]
            assert first.result(timeout=120)
            assert all(w.result(timeout=120) for w in waiting)
        assert (starts(daemon, "alpha"), starts(daemon, "beta")) == (3, 3), daemon.log()


def test_replicas_in_use_outlive_their_idle_timeout_and_stop_once_idle(tmp_path: Path) -> None:
    gpus = [{"index": i, "name": "Simulated", "memory_mb": 2000} for i in range(2)]
    memory = {"resource_requirements": {"gpu_count": 1, "gpu_memory_mb": 800}}
    model = on_demand("busy", replicas=2, idle_timeout_s=IDLE_S, **memory)
    instances = ("busy", "busy.1")
    # a pass every second, so that passes do run while the model is in use
    with running_daemon(tmp_path / "host", [model], gpus=gpus, extra_args=("--resync", "1")) as d:
        d.wait_ready()
        # the gateway loads the routing table of the first pass a moment after the API is ready
        assert wait_for(lambda: listed_status(d, "busy") == "cold", 20, 0.2), d.log()
        chat(d, "busy")
        d.wait_statuses(dict.fromkeys(instances, "running"), timeout_s=60)
        began = time.monotonic()
        while time.monotonic() - began < 3 * IDLE_S:  # in use all along, through many passes
            chat(d, "busy")
        assert [d.host.events("stop", i) for i in instances] == [[], []], d.log()
        assert [starts(d, i) for i in instances] == [1, 1]
        assert all(d.statuses()[i] == "running" for i in instances)
        # nobody asks any more: both instances go once idle_timeout_s has passed
        d.wait_statuses(dict.fromkeys(instances, "stopped"), timeout_s=60)
        for instance in instances:
            stop = d.host.events("stop", instance)
            assert len(stop) == 1 and "idle" in stop[0]["message"], stop

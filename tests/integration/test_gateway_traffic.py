"""GET /api/v1/traffic of a real `reconciler run`: the gateway's requests/s and latency per model,
after real requests through the gateway to stand-in engines; empty with a reason (never an
error) without a gateway or while it does not answer."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from apply_support import stand_in, wait_for
from daemon_support import Daemon, running_daemon
from prometheus_client.parser import text_string_to_metric_families

BODY = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def gateway_lists(daemon: Daemon, *model_ids: str) -> bool:
    try:
        listed = httpx.get(f"{daemon.gateway_url}/models", timeout=5).json()["data"]
    except httpx.HTTPError:
        return False
    running = {m["id"] for m in listed if m["status"] == "running"}
    return set(model_ids) <= running


def ask(daemon: Daemon, model: str) -> float:
    """One chat completion through the gateway; the seconds the client waited for it."""
    began = time.perf_counter()
    response = httpx.post(f"{daemon.gateway_url}/chat/completions", json={**BODY, "model": model})
    assert response.status_code == 200, response.text
    return time.perf_counter() - began


def traffic(daemon: Daemon) -> dict[str, Any]:
    return daemon.json("/api/v1/traffic")


def gateway_process(daemon: Daemon) -> psutil.Process:
    assert daemon.process is not None
    children = psutil.Process(daemon.process.pid).children(recursive=True)
    found = [p for p in children if "reconciler.gateway" in " ".join(p.cmdline())]
    assert len(found) == 1, [p.cmdline() for p in children]
    return found[0]


@pytest.fixture
def two_models(tmp_path: Path):
    models = [stand_in("alpha", priority=6), stand_in("beta", priority=4)]
    with running_daemon(tmp_path / "host", models) as daemon:
        daemon.wait_statuses({"alpha": "running", "beta": "running"})
        assert wait_for(lambda: gateway_lists(daemon, "alpha", "beta"), 20, 0.2), daemon.log()
        yield daemon


def test_requests_through_the_gateway_show_per_model(two_models: Daemon) -> None:
    daemon = two_models
    waited = sorted(ask(daemon, "alpha") for _ in range(40))
    for _ in range(5):
        ask(daemon, "beta")
    missing = httpx.post(f"{daemon.gateway_url}/chat/completions", json={**BODY, "model": "x"})
    assert missing.status_code == 404

    # a request counts once its second is over; the API keeps an answer for a second
    def counted() -> bool:
        models = traffic(daemon)["models"]
        counts = {m: models.get(m, {}).get("requests") for m in ("alpha", "beta")}
        return counts == {"alpha": 40, "beta": 5}

    assert wait_for(counted, 10, 0.2), traffic(daemon)
    report = traffic(daemon)
    assert report["reason"] is None
    assert 1 <= report["window_s"] <= 60
    alpha, beta = report["models"]["alpha"], report["models"]["beta"]
    assert alpha["requests_per_s"] == pytest.approx(40 / report["window_s"], abs=1e-3)
    assert beta["requests"] == 5
    assert alpha["errors_per_s"] == beta["errors_per_s"] == 0
    # the gateway's time is part of what the client waited: never more (bins are 2 % wide)
    client_p95_ms = 1000 * waited[37]  # nearest rank: the 38th of 40
    assert 0 < alpha["p50_ms"] <= alpha["p95_ms"] <= client_p95_ms * 1.02
    # and within the bucket of the gateway's Prometheus histogram that holds the 38th request
    low, high = histogram_bucket(daemon, "alpha", rank=38)
    assert low * 0.98 <= alpha["p95_ms"] / 1000 <= high * 1.02


def histogram_bucket(daemon: Daemon, model: str, rank: int) -> tuple[float, float]:
    """(lower, upper) bound of the request-duration bucket that holds the `rank`-th request."""
    text = httpx.get(daemon.gateway_url.removesuffix("/v1") + "/metrics").text
    family = next(
        f
        for f in text_string_to_metric_families(text)
        if f.name == "reconciler_gateway_request_duration_seconds"
    )
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in family.samples
        if s.name.endswith("_bucket") and s.labels["model"] == model
    )
    low = 0.0
    for upper, count in buckets:
        if count >= rank:
            return low, upper
        low = upper
    raise AssertionError(f"fewer than {rank} requests for {model}: {buckets}")


def test_a_gateway_that_does_not_answer_gives_empty_figures_and_says_why(
    two_models: Daemon,
) -> None:
    daemon = two_models
    ask(daemon, "alpha")
    assert wait_for(lambda: "alpha" in traffic(daemon)["models"], 10, 0.2)
    gateway = gateway_process(daemon)
    os.kill(gateway.pid, signal.SIGSTOP)  # alive (the daemon does not restart it), but mute
    try:
        time.sleep(1.1)  # past the API's cache

        def refused() -> bool:
            began = time.monotonic()
            response = daemon.get("/api/v1/traffic")
            assert time.monotonic() - began < 3, "the API waited on the gateway too long"
            assert response.status_code == 200, response.text
            return response.json()["models"] == {}

        assert wait_for(refused, 10, 0.1)
        assert "does not answer" in traffic(daemon)["reason"]
    finally:
        os.kill(gateway.pid, signal.SIGCONT)
    assert wait_for(lambda: "alpha" in traffic(daemon)["models"], 10, 0.2), traffic(daemon)
    assert daemon.get("/api/v1/models").status_code == 200


def test_without_a_gateway_the_figures_are_empty_and_say_why(tmp_path: Path) -> None:
    args = ("--resync", "3600", "--no-gateway")
    with running_daemon(tmp_path / "host", [stand_in("alpha")], extra_args=args) as daemon:
        daemon.wait_statuses({"alpha": "running"})
        response = daemon.get("/api/v1/traffic")
        assert response.status_code == 200
        assert response.json() == {
            "window_s": 0,
            "models": {},
            "reason": "no gateway (reconciler run --no-gateway)",
        }

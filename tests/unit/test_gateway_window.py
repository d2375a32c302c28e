"""The gateway's recent-traffic window (reconciler.gateway.metrics.TrafficWindow): what the
dashboard shows as req/s and p95, checked against a computation over every request kept."""

from __future__ import annotations

import math
import random
import timeit

import numpy as np
import pytest

from reconciler.gateway.metrics import TrafficWindow


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def expected(events: list[tuple[float, str, int, float]], now: float, span: int) -> dict:
    """Per model, over the whole seconds [floor(now) - span, floor(now)): what the window must
    report, computed from every request (nearest-rank percentiles by numpy)."""
    end = math.floor(now)
    out = {}
    for model in {e[1] for e in events}:
        kept = [e for e in events if e[1] == model and end - span <= e[0] < end]
        if not kept:
            continue
        durations = np.array([e[3] for e in kept])
        out[model] = {
            "requests": len(kept),
            "requests_per_s": len(kept) / span,
            "errors_per_s": sum(1 for e in kept if e[2] >= 500) / span,
            "p50_ms": 1000 * float(np.percentile(durations, 50, method="inverted_cdf")),
            "p95_ms": 1000 * float(np.percentile(durations, 95, method="inverted_cdf")),
        }
    return out


def replay(window: TrafficWindow, clock: Clock, events: list) -> None:
    for at, model, code, seconds in events:
        clock.now = at
        window.record(model, code, seconds)


def assert_matches(report: dict, wanted: dict) -> None:
    assert set(report["models"]) == set(wanted)
    for model, figures in wanted.items():
        got = report["models"][model]
        assert got["requests"] == figures["requests"], model
        assert got["requests_per_s"] == pytest.approx(figures["requests_per_s"], abs=1e-3)
        assert got["errors_per_s"] == pytest.approx(figures["errors_per_s"], abs=1e-3)
        # 2 % wide bins, reported at their geometric middle: within 1 % (+ rounding)
        for key in ("p50_ms", "p95_ms"):
            assert got[key] == pytest.approx(figures[key], rel=0.011, abs=2e-3), (model, key)


def random_traffic(rng: random.Random, start: float, end: float, n: int) -> list:
    events = []
    for _ in range(n):
        model = rng.choice(["llama", "qwen", "phi"])
        typical = {"llama": 0.2, "qwen": 0.02, "phi": 0.002}[model]
        code = rng.choices([200, 404, 429, 502, 503], weights=[90, 3, 2, 2, 3])[0]
        events.append((rng.uniform(start, end), model, code, rng.lognormvariate(0, 1) * typical))
    return sorted(events)


def test_rates_and_percentiles_match_every_request_of_the_last_minute(seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock(1000.0)
    window = TrafficWindow(60, clock)
    events = random_traffic(rng, 1000.0, 1200.0, 20_000)
    replay(window, clock, events)
    for now in (1200.4, 1230.0, 1259.99):
        clock.now = now
        report = window.report()
        assert report["window_s"] == 60
        assert_matches(report, expected(events, now, 60))


def test_a_young_gateway_divides_by_the_seconds_it_has_seen(seed: int) -> None:
    clock = Clock(1000.0)
    window = TrafficWindow(60, clock)
    events = random_traffic(random.Random(seed), 1000.0, 1004.99, 500)
    replay(window, clock, events)
    clock.now = 1005.5
    report = window.report()
    assert report["window_s"] == 5
    assert_matches(report, expected(events, 1005.5, 5))


def test_a_request_counts_from_the_next_second_until_a_minute_later() -> None:
    clock = Clock(1000.0)
    window = TrafficWindow(60, clock)
    clock.now = 1100.3
    window.record("llama", 200, 0.25)
    clock.now = 1100.9
    assert window.report()["models"] == {}  # the second is not over yet
    clock.now = 1101.0
    assert window.report()["models"]["llama"] == {
        "requests": 1,
        "requests_per_s": round(1 / 60, 3),
        "p50_ms": pytest.approx(250, rel=0.011),
        "p95_ms": pytest.approx(250, rel=0.011),
        "errors_per_s": 0.0,
    }
    clock.now = 1160.9
    assert "llama" in window.report()["models"]
    clock.now = 1161.0
    assert window.report()["models"] == {}


def test_errors_are_server_errors_only() -> None:
    clock = Clock(1000.0)
    window = TrafficWindow(10, clock)
    clock.now = 1010.5
    for code in (200, 200, 404, 401, 429, 500, 502, 503):
        window.record("qwen", code, 0.01)
    clock.now = 1011.0
    figures = window.report()["models"]["qwen"]
    assert figures["requests_per_s"] == 0.8
    assert figures["errors_per_s"] == 0.3


def test_recording_a_request_costs_a_few_microseconds() -> None:
    window = TrafficWindow()
    models = ["llama", "qwen", "phi"]
    durations = [0.001 * (1 + i % 97) for i in range(300)]
    calls = len(models) * len(durations)

    def burst() -> None:
        for model in models:
            for seconds in durations:
                window.record(model, 200, seconds)

    # the fastest of several runs: what the code costs, not what a busy shared host adds
    best = min(timeit.repeat(burst, number=20, repeat=7)) / (20 * calls)
    print(f"TrafficWindow.record: {best * 1e6:.2f} us per request")
    assert best < 5e-6

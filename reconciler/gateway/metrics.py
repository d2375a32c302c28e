"""What clients feel, measured: the gateway's Prometheus metrics (served at its /metrics) and
each model's recent traffic for people (the dashboard's glance; Prometheus has the long view).

Label values are model ids the table knows (a name no model answers to counts as `unknown`, so
clients cannot grow the series without bound) and API key names, never keys.

TrafficWindow keeps requests/s, p50/p95 latency and errors/s over the last `window_s` whole
seconds: one bucket per model and second, in a ring, so a request costs a clock read, a logarithm
and a few increments (about 1 us, measured in tests/unit/test_gateway_window.py), and memory
stays fixed whatever the rate. Latencies go into logarithmic bins 2 % wide, so a percentile is
exact to about 1 %, and reading one merges at most `window_s` small dicts: never a sort of every
request on the gateway's event loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

Family = TypeVar("Family", Counter, Gauge, Histogram)
UNKNOWN_MODEL = "unknown"


class Failover(StrEnum):
    """Why a request went elsewhere before its first byte: the failover counter's `reason`."""

    connection = "connection"
    """no connection, or it broke before an answer"""
    http_502 = "http_502"
    http_503 = "http_503"
    fallback = "fallback"
    """no instance of the model answered: its fallback serves"""


CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)
COLD_START_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "reconciler_gateway_requests",
            "Requests answered by the gateway, by model and HTTP status code",
            ["model", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "reconciler_gateway_request_duration_seconds",
            "Time from the request's arrival to the last byte of the response",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "reconciler_gateway_time_to_first_byte_seconds",
            "Time from the request's arrival to the first byte of the body (first token of a "
            "stream)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "reconciler_gateway_tokens",
            "Tokens reported in the engines' usage, by kind (prompt, completion)",
            ["model", "kind"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "reconciler_gateway_queue_depth",
            "Requests waiting for a model to become ready",
            ["model"],
            registry=r,
        )
        self.inflight = Gauge(
            "reconciler_gateway_inflight_requests",
            "Requests forwarded to an engine and not finished",
            ["model"],
            registry=r,
        )
        self.cold_start = Histogram(
            "reconciler_gateway_cold_start_seconds",
            "Time the first waiting request waited for a model to become ready",
            ["model"],
            buckets=COLD_START_BUCKETS,
            registry=r,
        )
        self.failovers = Counter(
            "reconciler_gateway_failovers",
            "Requests retried on another instance or the fallback before the first byte, by reason",
            ["model", "reason"],
            registry=r,
        )
        self.overflows = Counter(
            "reconciler_gateway_overflow",
            "Requests sent to a model's overflow model because more than queue_over already "
            "waited for it",
            ["model", "to"],
            registry=r,
        )
        self.forwards = Counter(
            "reconciler_gateway_forwarded",
            "Requests forwarded to another host's gateway (a fleet), by the host that answered "
            "and its HTTP status code",
            ["model", "host", "code"],
            registry=r,
        )
        self.key_requests = Counter(
            "reconciler_gateway_key_requests",
            "Requests accepted per API key name",
            ["key"],
            registry=r,
        )
        self._children: dict[tuple[str, ...], MetricWrapperBase] = {}

    def _child(self, family: Family, *labels: str) -> Family:
        key = (family._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return cast(Family, child)  # keyed by the family's name: the child is of its type

    def request_done(self, model: str, code: int, seconds: float) -> None:
        self._child(self.requests, model, str(code)).inc()
        self._child(self.duration, model).observe(seconds)

    def first_byte(self, model: str, seconds: float) -> None:
        self._child(self.ttfb, model).observe(seconds)

    def tokens_add(self, model: str, kind: str, count: int) -> None:
        if count > 0:
            self._child(self.tokens, model, kind).inc(count)

    def inflight_add(self, model: str, delta: int) -> None:
        self._child(self.inflight, model).inc(delta)

    def queue_add(self, model: str, delta: int) -> None:
        self._child(self.queue_depth, model).inc(delta)

    def cold_started(self, model: str, seconds: float) -> None:
        self._child(self.cold_start, model).observe(seconds)

    def failover(self, model: str, reason: Failover) -> None:
        self._child(self.failovers, model, reason).inc()

    def overflowed(self, model: str, to: str) -> None:
        self._child(self.overflows, model, to).inc()

    def forwarded(self, model: str, host: str, code: int) -> None:
        self._child(self.forwards, model, host, str(code)).inc()

    def key_used(self, name: str) -> None:
        self._child(self.key_requests, name).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# -- the recent window ---------------------------------------------------------------------------

BIN_GROWTH = 1.02
"""each latency bin is 2 % wider than the one before: a percentile is off by at most 1 %"""
SHORTEST_S = 1e-6
ERROR_CODES_FROM = 500
"""server errors, as the alert rules count them: a client's mistake (404, 401) is not one"""


class _Second:
    __slots__ = ("bins", "count", "errors", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.count = 0
        self.errors = 0
        self.bins: dict[int, int] = {}


class TrafficWindow:
    """Requests per model over the last `window_s` whole seconds (the current second, still
    filling, is left out so that a rate never dips at the turn of a second)."""

    def __init__(self, window_s: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.started = clock()
        self._size = window_s + 1
        self._rings: dict[str, list[_Second | None]] = {}
        self._scale = 1 / math.log(BIN_GROWTH)
        self._shortest_bin = math.floor(math.log(SHORTEST_S) * self._scale)

    def record(self, model: str, code: int, seconds: float) -> None:
        """One request that ended now: its model, HTTP status and duration."""
        second = int(self.clock())
        ring = self._rings.get(model)
        if ring is None:
            ring = self._rings[model] = [None] * self._size
        index = second % self._size
        bucket = ring[index]
        if bucket is None or bucket.second != second:
            bucket = ring[index] = _Second(second)
        bucket.count += 1
        if code >= ERROR_CODES_FROM:
            bucket.errors += 1
        if seconds > SHORTEST_S:
            key = math.floor(math.log(seconds) * self._scale)
        else:
            key = self._shortest_bin
        bins = bucket.bins
        bins[key] = bins.get(key, 0) + 1

    def report(self) -> dict[str, object]:
        """{window_s, models: {id: {requests, requests_per_s, p50_ms, p95_ms, errors_per_s}}};
        window_s is the span covered: shorter than the window while the gateway is young.
        Models without a request in the window are left out."""
        current = int(self.clock())
        first = max(current - self.window_s, int(self.started))
        span = max(1, current - first)
        models = {}
        for model, ring in list(self._rings.items()):
            seconds = [b for b in ring if b is not None and first <= b.second < current]
            if not seconds:
                if all(b is None or b.second < first for b in ring):
                    del self._rings[model]  # gone quiet (or gone): its ring goes too
                continue
            count = sum(b.count for b in seconds)
            errors = sum(b.errors for b in seconds)
            merged: dict[int, int] = {}
            for bucket in seconds:
                for key, n in bucket.bins.items():
                    merged[key] = merged.get(key, 0) + n
            p50, p95 = self._percentiles(merged, count, (0.5, 0.95))
            models[model] = {
                "requests": count,
                "requests_per_s": round(count / span, 3),
                "p50_ms": round(p50 * 1000, 3),
                "p95_ms": round(p95 * 1000, 3),
                "errors_per_s": round(errors / span, 3),
            }
        return {"window_s": span, "models": models}

    def _percentiles(
        self, bins: dict[int, int], count: int, quantiles: tuple[float, ...]
    ) -> list[float]:
        """Nearest-rank percentiles (the smallest value with at least q of the requests at or
        below it), each given as the geometric middle of its bin."""
        ranks = [max(1, math.ceil(q * count - 1e-9)) for q in quantiles]
        values = [0.0] * len(ranks)
        seen = 0
        pending = 0
        for key in sorted(bins):
            seen += bins[key]
            while pending < len(ranks) and seen >= ranks[pending]:
                values[pending] = math.exp((key + 0.5) / self._scale)
                pending += 1
            if pending == len(ranks):
                break
        return values

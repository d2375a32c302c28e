"""The gateway's Prometheus metrics: what clients feel (served at the gateway's /metrics).

Label values are model ids the table knows (a name no model answers to counts as `unknown`, so
clients cannot grow the series without bound) and API key names, never keys.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

UNKNOWN_MODEL = "unknown"
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
        self.key_requests = Counter(
            "reconciler_gateway_key_requests",
            "Requests accepted per API key name",
            ["key"],
            registry=r,
        )
        self._children: dict[tuple[str, ...], object] = {}

    def _child(self, family: Counter | Gauge | Histogram, *labels: str):
        key = (family._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

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

    def failover(self, model: str, reason: str) -> None:
        self._child(self.failovers, model, reason).inc()

    def key_used(self, name: str) -> None:
        self._child(self.key_requests, name).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

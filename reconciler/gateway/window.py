"""Each model's recent traffic, for people (the dashboard): requests/s, p50/p95 latency, errors/s
over the last `window_s` whole seconds. Prometheus has the long view; this is the glance.

One bucket per model and second, in a ring: a request costs a clock read, a logarithm and a few
increments (about 1 us, measured in tests/unit/test_gateway_window.py), and memory stays fixed
whatever the rate. Latencies go into logarithmic bins 2 % wide, so a percentile is exact to
about 1 %, and reading one merges at most `window_s` small dicts: never a sort of every request
on the gateway's event loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

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

    def report(self) -> dict:
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

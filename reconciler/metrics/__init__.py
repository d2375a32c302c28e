"""Prometheus metrics: what runs, on which GPU, how the loop is doing.

Two kinds of metric, for two kinds of truth:
- live values (model status, priorities, reservations, GPU telemetry, desired-state validity) are
  read at scrape time from callables the daemon gives, so a scrape always shows the state file
  and the inventory as they are now, and nothing can drift from them;
- things that only happen (passes, preemptions, start-to-ready times, events) are counted by the
  hooks `record_pass` and `record_event` as the loop runs.

Restart counts are read from the state file's `restarts_total`, not counted here, so that they
survive a daemon restart (a Prometheus counter may reset, but need not when the truth is on disk).
Every family is built with prometheus-client's types: the exposition is never formatted by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from reconciler.core.events import EventKind
from reconciler.core.plan import Plan
from reconciler.core.schedule.values import GPUInfo
from reconciler.metrics.families import (
    DesiredSnapshot,
    Families,
    add_desired,
    add_gpus,
    add_memory,
    add_models,
    desired_snapshot,
    models_of,
    reserved_bytes_by_gpu,
)
from reconciler.state.statefile import State

__all__ = [
    "CONTENT_TYPE",
    "EVENT_KINDS",
    "PASS_RESULTS",
    "DesiredSnapshot",
    "ReconcilerMetrics",
    "render",
    "snapshot_from_plan",
]

log = logging.getLogger("reconciler.metrics")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The Content-Type of `render()`'s output, for the /metrics response. The text format 0.0.4 is
what generate_latest writes for these names, and what every Prometheus version and other scraper
accepts (prometheus-client's own HTTP handler announces it too)."""

PASS_RESULTS = ("ok", "invalid", "error")
"""ok: a valid desired state was applied; invalid: the desired state was rejected (the last valid
one stayed in force); error: the pass raised."""

EVENT_KINDS = tuple(kind.value for kind in EventKind)
"""Known event kinds: exported at 0 from the start, so that increase() works on the first one."""

# Engines take from a second (a small GGUF) to many minutes (a 70B model loading from disk).
READY_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# A pass is mostly file reads and process checks; seconds mean an engine stop was slow.
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def snapshot_from_plan(plan: Plan | None) -> DesiredSnapshot | None:
    """The desired-state metrics of the last pass's plan (PassResult.plan); None before one."""
    if plan is None:
        return None
    priorities = {m: o.priority for m, o in plan.models.items() if o.priority is not None}
    return DesiredSnapshot(plan.valid, plan.revision, priorities, len(plan.unschedulable))


SOURCES = ("state", "gpus", "desired", "gpus_declared", "notifications", "memory")
"""The live sources by name, as reconciler_metrics_source_errors labels them."""

StateSource = Callable[[], State | None]
GPUSource = Callable[[], Sequence[GPUInfo]]
DesiredSource = Callable[[], tuple[bool, str | None, Mapping[str, int], int] | None]
"""(valid, revision, priorities, unschedulable), a DesiredSnapshot; None before the first pass"""
NotificationSource = Callable[[], Mapping[tuple[str, str], int]]
MemorySource = Callable[[], Mapping[str, tuple[int | None, int | None]]]
"""model id -> (estimated MiB, measured MiB) per GPU"""


class ReconcilerMetrics:
    """Every reconciler_* metric, registered in `registry`.

    The daemon calls `record_event` for each event it writes to events.jsonl and `record_pass`
    after each pass; the live sources are called on every scrape, from the API's thread, so
    they must be thread-safe and cheap (reading the state file is; so is NVML).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        state: StateSource,
        gpus: GPUSource,
        desired: DesiredSource,
        gpus_declared: Callable[[], bool] = lambda: False,
        notifications: NotificationSource | None = None,
        memory: MemorySource | None = None,
        process_metrics: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self._clock = clock
        self._lock = threading.Lock()
        self._preemptions: Tally[str] = Tally()
        self._last_success: float | None = None
        self._source_errors: Tally[str] = Tally()
        self._pass_duration = Histogram(
            "reconciler_reconcile_duration_seconds",
            "Time one reconcile pass took.",
            buckets=PASS_BUCKETS,
            registry=registry,
        )
        self._passes = Counter(
            "reconciler_reconcile",
            "Reconcile passes, by result (ok, invalid, error).",
            ["result"],
            registry=registry,
        )
        self._events = Counter(
            "reconciler_events",
            "Events written to events.jsonl, by kind.",
            ["kind"],
            registry=registry,
        )
        self._ready = Histogram(
            "reconciler_model_ready_seconds",
            "Time from an engine's start to its first successful readiness probe.",
            ["model"],
            buckets=READY_BUCKETS,
            registry=registry,
        )
        for result in PASS_RESULTS:
            self._passes.labels(result)
        for kind in EVENT_KINDS:
            self._events.labels(kind)
        self._live = _LiveCollector(
            self,
            state,
            gpus,
            desired,
            gpus_declared,
            notifications or (lambda: {}),
            memory or (lambda: {}),
        )
        registry.register(self._live)
        if process_metrics:  # memory, CPU, open fds and start time of the daemon itself
            ProcessCollector(registry=registry)

    # -- hooks the daemon calls ------------------------------------------------------------

    def record_event(self, event: Mapping[str, object]) -> None:
        """Count one event {time, kind, model, message, ...}. Never raises on a malformed one:
        a metrics hook must not break the loop that calls it."""
        kind = event.get("kind") if isinstance(event, Mapping) else None
        if not isinstance(kind, str):
            log.debug("ignoring an event without a kind: %r", event)
            return
        model = event.get("model")
        self._events.labels(kind).inc()
        if not isinstance(model, str):
            return
        if kind == EventKind.preempt:
            with self._lock:
                self._preemptions[model] += 1
        elif kind == EventKind.ready:
            seconds = _ready_seconds(event)
            if seconds is not None:
                self._ready.labels(model).observe(seconds)

    def record_pass(self, duration_s: float, result: str) -> None:
        """Count one pass: result is ok, invalid or error."""
        if result not in PASS_RESULTS:
            raise ValueError(f"unknown pass result {result!r} (one of {', '.join(PASS_RESULTS)})")
        self._pass_duration.observe(max(0.0, duration_s))
        self._passes.labels(result).inc()
        if result == "ok":
            with self._lock:
                self._last_success = self._clock()

    # -- read by the collector -------------------------------------------------------------

    def _counted(self) -> tuple[dict[str, int], float | None, dict[str, int]]:
        with self._lock:
            return dict(self._preemptions), self._last_success, dict(self._source_errors)

    def _source_failed(self, source: str) -> None:
        with self._lock:
            self._source_errors[source] += 1


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of every metric in `registry` (serve it with CONTENT_TYPE)."""
    return generate_latest(registry)


def _ready_seconds(event: Mapping[str, object]) -> float | None:
    seconds = event.get("seconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return max(0.0, float(seconds))
    return None  # read from its field only, never from the words of its message


T = TypeVar("T")


class _LiveCollector(Collector):
    """Builds the live families on each scrape from the daemon's sources."""

    def __init__(
        self,
        metrics: ReconcilerMetrics,
        state: StateSource,
        gpus: GPUSource,
        desired: DesiredSource,
        gpus_declared: Callable[[], bool],
        notifications: NotificationSource,
        memory: MemorySource,
    ) -> None:
        self._metrics = metrics
        self._state = state
        self._gpus = gpus
        self._desired = desired
        self._gpus_declared = gpus_declared
        self._notifications = notifications
        self._memory = memory

    def describe(self) -> Iterable[Metric]:
        # Names only: registering must not call the sources (the daemon may not be ready yet).
        return Families().all()

    def collect(self) -> Iterable[Metric]:
        state = self._read("state", self._state, None)
        gpus: Sequence[GPUInfo] = self._read("gpus", self._gpus, [])
        desired = desired_snapshot(self._read("desired", self._desired, None))
        declared = self._read("gpus_declared", self._gpus_declared, False)
        notifications: Mapping[tuple[str, str], int] = self._read(
            "notifications", self._notifications, {}
        )
        preemptions, last_success, source_errors = self._metrics._counted()
        families = Families()
        models = models_of(state)
        priorities = dict(desired.priorities) if desired else {}
        add_models(families, models, priorities, preemptions)
        add_gpus(families, gpus, reserved_bytes_by_gpu(models), declared)
        add_memory(families, self._read("memory", self._memory, {}))
        add_desired(families, desired)
        if last_success is not None:
            families.last_success.add_metric([], last_success)
        for (target, outcome), count in sorted(notifications.items()):
            families.notifications.add_metric([target, outcome], count)
        for source in SOURCES:
            families.source_errors.add_metric([source], source_errors.get(source, 0))
        return families.all()

    def _read(self, name: str, source: Callable[[], T], default: T) -> T:
        """One source's value; a failing source leaves its families empty, not the scrape."""
        try:
            return source()
        except Exception:
            log.warning("metrics: reading %s failed", name, exc_info=True)
            self._metrics._source_failed(name)
            return default

"""Readiness and liveness of engines over HTTP.

Two halves: `probe()` / `wait_ready()` do the I/O (httpx), and `HealthTracker` is a pure state
machine fed with probe results and timestamps, so every transition is testable without clocks.

The tracker implements a spec's health_check:
- `starting` until the first successful probe; failures while starting do not count, but if
  no probe has succeeded `startup_timeout_s` after the start, the start `failed`;
- `running` once ready; `failure_threshold` failed probes in a row make it `unhealthy`;
- `unhealthy` and `failed` are final for this tracker: the engine needs a restart, which
  begins a new tracker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import httpx

from reconciler.core.spec import HealthCheck


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    elapsed_s: float = 0.0

    def __bool__(self) -> bool:
        return self.ok


def probe(url: str, timeout: float, *, client: httpx.Client | None = None) -> ProbeResult:
    """One GET: ok on any 2xx answer within `timeout` seconds. Never raises."""
    started = time.monotonic()
    try:
        if client is None:
            # trust_env=False: engines are local, an HTTP(S)_PROXY of the host must not be used
            response = httpx.get(url, timeout=timeout, trust_env=False)
        else:
            response = client.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ProbeResult(False, error=error, elapsed_s=time.monotonic() - started)
    elapsed = time.monotonic() - started
    if response.is_success:
        return ProbeResult(True, response.status_code, elapsed_s=elapsed)
    return ProbeResult(False, response.status_code, f"HTTP {response.status_code}", elapsed)


def wait_ready(
    url: str,
    timeout: float,
    *,
    interval: float = 0.2,
    probe_timeout: float = 2.0,
    alive: Callable[[], bool] | None = None,
) -> ProbeResult:
    """Probe `url` until it answers 2xx or `timeout` seconds pass (one-shot apply).

    `alive` is asked between probes: when the engine process is gone there is no point in
    waiting out the timeout. The last probe's result is returned (ok=False on timeout).
    """
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False) as client:
        while True:
            remaining = deadline - time.monotonic()
            result = probe(url, max(0.05, min(probe_timeout, remaining)), client=client)
            if result.ok:
                return result
            if alive is not None and not alive():
                return ProbeResult(False, result.status_code, "engine process exited")
            if time.monotonic() + interval >= deadline:
                return ProbeResult(False, result.status_code, f"not ready after {timeout:g}s")
            time.sleep(interval)


class Health(StrEnum):
    starting = "starting"
    running = "running"
    unhealthy = "unhealthy"
    """Was ready, then failed `failure_threshold` probes in a row: restart it."""
    failed = "failed"
    """Never became ready within `startup_timeout_s`: a failed start."""


@dataclass
class HealthTracker:
    """The health of one engine run. Pure: time comes in as arguments.

    `started_at` is when this tracker began watching: the engine's start, or the moment a
    restarted reconciler adopted it (an adopted engine gets a full startup allowance).
    """

    check: HealthCheck
    started_at: float
    state: Health = Health.starting
    consecutive_failures: int = 0
    last_probe_at: float | None = None
    last_error: str | None = None
    ready_at: float | None = field(default=None)

    @property
    def needs_restart(self) -> bool:
        return self.state in (Health.unhealthy, Health.failed)

    def due(self, now: float) -> bool:
        """Whether a probe should run now (every interval_s; at once before the first)."""
        if self.needs_restart:
            return False
        return self.last_probe_at is None or now - self.last_probe_at >= self.check.interval_s

    def record(self, ok: bool, now: float, error: str | None = None) -> Health:
        """Feed one probe result taken at `now`; the new state.

        A success counts even when it comes after the startup deadline but before expire()
        declared the start failed: the engine is ready, and restarting it would only hurt.
        """
        if self.needs_restart:
            return self.state
        self.last_probe_at = now
        if ok:
            self._succeeded(now)
        else:
            self._failed(now, error)
        return self.state

    def expire(self, now: float) -> Health:
        """Apply the startup timeout without a probe (e.g. while the port is not even open)."""
        if self.state is Health.starting and now - self.started_at > self.check.startup_timeout_s:
            self.state = Health.failed
            reason = self.last_error or "no probe answered"
            self.last_error = f"not ready after {self.check.startup_timeout_s:g}s: {reason}"
        return self.state

    def _succeeded(self, now: float) -> None:
        self.consecutive_failures = 0
        self.last_error = None
        if self.state is Health.starting:
            self.state = Health.running
            self.ready_at = now

    def _failed(self, now: float, error: str | None) -> None:
        self.last_error = error or "probe failed"
        if self.state is Health.starting:
            self.expire(now)  # failures while loading are expected; only the deadline counts
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.check.failure_threshold:
            self.state = Health.unhealthy
            self.last_error = (
                f"{self.consecutive_failures} probes failed in a row: {self.last_error}"
            )

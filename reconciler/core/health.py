"""Health decisions for one engine, from probe results and times. Pure: the shell probes.

A spec's `health_check` reads:
- `timeout_s`: one probe that has no answer after this long counts as failed. It is used as
  written (no hidden cap): a slow engine gets the time its spec grants it.
- `startup_timeout_s`: an engine that never answered is `starting` until this long after its
  start; failed probes while it loads are expected and do not count. After that, it failed.
- `failure_threshold`: a ready engine fails after this many failed probes in a row. The count
  is kept in the state file, so one-shot `apply` runs add up just as a daemon's probes do.
- `interval_s`: a ready engine is probed this often; a starting one on every pass, so that it is
  seen ready as soon as it answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.spec import HealthCheck


@dataclass(frozen=True)
class ProbeResult:
    """What one probe saw: an answer (ok), or why not."""

    ok: bool
    error: str | None = None
    status_code: int | None = None
    elapsed_s: float = 0.0

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class Verdict:
    """What to make of one probe."""

    ready: bool
    """the engine has answered since its start (running)"""
    failures: int = 0
    """failed probes in a row since it was ready"""
    failure: str | None = None
    """set when the engine failed: stop it and count a restart"""
    became_ready: bool = False
    """this probe was its first answer"""


def probe_timeout_s(check: HealthCheck) -> float:
    """How long one probe waits for an answer: the spec's own `timeout_s`."""
    return check.timeout_s


def probe_due(check: HealthCheck, *, ready: bool, last_probe_at: float | None, now: float) -> bool:
    """Whether to probe now: a starting engine always, a ready one every `interval_s`."""
    return not ready or last_probe_at is None or now - last_probe_at >= check.interval_s


def judge(
    check: HealthCheck,
    probe: ProbeResult,
    *,
    ready: bool,
    started_at: float,
    failures: int,
    now: float,
) -> Verdict:
    """The engine's health after `probe`, taken at `now`.

    `ready`: it had answered before; `failures`: its failed probes in a row until now. A late
    first answer (after the startup deadline, before any verdict said so) still counts as
    ready: the engine works, and restarting it would only hurt.
    """
    if probe.ok:
        return Verdict(ready=True, became_ready=not ready)
    reason = f": {probe.error}" if probe.error else ""
    if not ready:
        if now - started_at <= check.startup_timeout_s:
            return Verdict(ready=False)
        return Verdict(
            ready=False, failure=f"not ready within {check.startup_timeout_s:g}s{reason}"
        )
    misses = failures + 1
    if misses < check.failure_threshold:
        return Verdict(ready=True, failures=misses)
    message = f"unhealthy: {misses} failed health checks in a row{reason}"
    return Verdict(ready=True, failures=misses, failure=message)


def startup_expired(check: HealthCheck, *, started_at: float, now: float) -> bool:
    """A starting engine that is past its startup deadline (no probe needed to know)."""
    return now - started_at > check.startup_timeout_s

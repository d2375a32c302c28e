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

Busy is not dead: a probe of a ready engine that timed out while the engine had requests in
flight through the gateway, and had sent bytes to one of them within the last `interval_s +
timeout_s` (about since the previous probe went out), says only that the engine is busy
answering; it neither counts as a failure nor resets the count. An engine with requests in
flight that has sent nothing for longer, or whose probe failed any other way (refused, an HTTP
error), is judged as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.spec import HealthCheck


@dataclass(frozen=True)
class Activity:
    """What the gateway saw of one engine instance, asked when a probe of it timed out."""

    inflight: int
    """requests to it in flight through the gateway"""
    last_byte_age_s: float | None
    """seconds since it last sent bytes to a client through the gateway; None: not yet"""


@dataclass(frozen=True)
class ProbeResult:
    """What one probe saw: an answer (ok), or why not."""

    ok: bool
    error: str | None = None
    status_code: int | None = None
    elapsed_s: float = 0.0
    timed_out: bool = False
    """no answer within the probe's timeout (not refused, not an HTTP error)"""
    activity: Activity | None = None
    """the gateway's view of the engine when the probe timed out (None: no gateway, or it did
    not answer)"""

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


def busy_window_s(check: HealthCheck) -> float:
    """How recently an engine must have sent bytes to a client for a timed-out probe to be
    excused: about since the probe before this one went out."""
    return check.interval_s + check.timeout_s


def excused(check: HealthCheck, probe: ProbeResult) -> bool:
    """A failed probe that says nothing about health: it timed out while the engine was busy
    streaming answers through the gateway (requests in flight, bytes sent recently)."""
    seen = probe.activity
    return (
        not probe.ok
        and probe.timed_out
        and seen is not None
        and seen.inflight > 0
        and seen.last_byte_age_s is not None
        and seen.last_byte_age_s <= busy_window_s(check)
    )


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
    if ready and excused(check, probe):
        return Verdict(ready=True, failures=failures)
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


def judge_unanswered(
    check: HealthCheck, *, ready: bool, started_at: float, failures: int, now: float
) -> Verdict:
    """The engine's health while its probe has not answered yet (probes run beside the loop,
    and one may take up to its `timeout_s`): nothing is known, except that a starting engine
    past its startup deadline failed."""
    if not ready and startup_expired(check, started_at=started_at, now=now):
        message = f"not ready within {check.startup_timeout_s:g}s: its probe has not answered"
        return Verdict(ready=False, failure=message)
    return Verdict(ready=ready, failures=failures)

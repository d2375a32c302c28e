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

Crash bookkeeping across passes (restarts, backoff, giving up) is pure the same way: fed with
what a pass saw, the clock value and a jitter factor that the shell draws, it returns the
instance's record with its bookkeeping fields (restarts, restarts_total, next_retry_at,
given_up, last_error, last_log_lines) updated; its status is the caller's business
(reconciler.core.instance.transition). The shell (reconciler.loop) does the probing, the
stopping and the drawing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from reconciler.core.instance import InstanceRecord
from reconciler.core.spec import HealthCheck, RetryPolicy


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


# ---- restarts: backoff and giving up -----------------------------------------------------

JITTER = 0.2
"""Delays are spread by a factor drawn from [1 - JITTER, 1 + JITTER] (by the shell: the core has
no randomness), so that engines that failed together do not restart in lock-step."""


@dataclass(frozen=True)
class Failure:
    """Why an engine was lost: exited, disappeared, unhealthy, not ready in time."""

    message: str
    log_lines: tuple[str, ...] = ()


def backoff_delay(base_s: float, attempt: int, cap_s: float, jitter: float = 1.0) -> float:
    """Delay before retry number `attempt` (1-based): `base_s` doubling, times `jitter`, never
    more than `cap_s`.

    `jitter` is a factor in [1 - JITTER, 1 + JITTER] that the caller draws (a value outside is
    taken as the nearest bound). Jitter is applied to the capped delay and the result capped
    again, so delays at the cap still spread over [(1 - JITTER) * cap, cap].
    The one backoff rule, for engine restarts and notification deliveries alike.
    """
    exponent = min(max(attempt - 1, 0), 64)  # 2**64 seconds is past any cap; no overflow
    factor = min(max(jitter, 1.0 - JITTER), 1.0 + JITTER)
    return min(min(base_s * (2.0**exponent), cap_s) * factor, cap_s)


def backoff_s(policy: RetryPolicy, restarts: int, jitter: float = 1.0) -> float:
    """Delay before restart number `restarts` (1-based): backoff_s doubling, capped, jittered.

    Jitter (a factor around 1) spreads the restarts of engines that failed together, so that a
    host that lost all engines at once does not restart them in lock-step.
    """
    return backoff_delay(policy.backoff_s, restarts, policy.max_backoff_s, jitter)


def record_failure(
    state: InstanceRecord,
    policy: RetryPolicy,
    failure: Failure,
    now: float,
    jitter: float,
) -> InstanceRecord:
    """Count one failure; schedule the retry (`jitter`: see backoff_delay), or give up after
    max_retries in a row."""
    restarts = state.restarts + 1
    gave_up = restarts > policy.max_retries
    return replace(
        state,
        restarts=restarts,
        restarts_total=state.restarts_total + 1,
        next_retry_at=None if gave_up else now + backoff_s(policy, restarts, jitter),
        given_up=gave_up,
        last_error=failure.message,
        last_log_lines=failure.log_lines,
    )


def record_permanent(state: InstanceRecord, message: str) -> InstanceRecord:
    """A failure that retrying cannot fix (missing executable or file, port in use)."""
    return replace(state, given_up=True, next_retry_at=None, last_error=message)


def record_ready(state: InstanceRecord) -> InstanceRecord:
    """Ready again: the next crash starts the backoff from the beginning."""
    return replace(state, restarts=0, next_retry_at=None, given_up=False)


def cleared(state: InstanceRecord) -> InstanceRecord:
    """An operator's restart or a changed spec: try again from scratch, history kept (the
    total of restarts and the last error)."""
    return replace(state, restarts=0, next_retry_at=None, given_up=False, last_log_lines=())


def waiting(state: InstanceRecord, now: float) -> bool:
    """True while a retry is scheduled in the future."""
    return state.next_retry_at is not None and now < state.next_retry_at

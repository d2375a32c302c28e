"""Crash and health bookkeeping of one engine across passes: restarts, backoff, giving up.

Pure: fed with what a pass saw (alive? healthy? since when?), the clock value and a jitter
factor that the shell draws, it returns the instance's record with its bookkeeping fields
(restarts, restarts_total, next_retry_at, given_up, last_error, last_log_lines) updated; its
status is the caller's business (reconciler.core.instance.transition). The shell (reconciler.loop)
does the probing, the stopping and the drawing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from reconciler.core.instance import InstanceRecord
from reconciler.core.spec import RetryPolicy

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

"""Health decisions (reconciler.core.health): startup timeout, failure threshold, probe timing."""

from __future__ import annotations

import pytest

from reconciler.core.health import (
    ProbeResult,
    Verdict,
    judge,
    probe_due,
    probe_timeout_s,
    startup_expired,
)
from reconciler.core.spec import HealthCheck

CHECK = HealthCheck(interval_s=10, timeout_s=5, failure_threshold=3, startup_timeout_s=60)
OK = ProbeResult(True)
REFUSED = ProbeResult(False, "ConnectError: connection refused")
SLOW = ProbeResult(False, "ReadTimeout")


def run(probes: list[ProbeResult], *, started_at: float = 0.0, every: float = 10.0) -> Verdict:
    """Feed probes taken every `every` seconds from `started_at`, as the shell does; stop at
    the first failure verdict."""
    verdict = Verdict(ready=False)
    for n, result in enumerate(probes, start=1):
        verdict = judge(
            CHECK,
            result,
            ready=verdict.ready,
            started_at=started_at,
            failures=verdict.failures,
            now=started_at + n * every,
        )
        if verdict.failure:
            break
    return verdict


# -- starting -----------------------------------------------------------------------------------


def test_failures_while_starting_do_not_count() -> None:
    verdict = run([REFUSED] * 5)  # 50 s of refused probes: still inside 60 s
    assert verdict == Verdict(ready=False)


def test_the_first_answer_makes_it_ready() -> None:
    verdict = judge(CHECK, OK, ready=False, started_at=0, failures=0, now=12)
    assert verdict == Verdict(ready=True, failures=0, became_ready=True)


def test_no_answer_by_the_startup_deadline_is_a_failed_start_with_the_last_error() -> None:
    inside = judge(CHECK, REFUSED, ready=False, started_at=100, failures=0, now=160)
    assert inside.failure is None, "the deadline itself is still inside"
    late = judge(CHECK, REFUSED, ready=False, started_at=100, failures=0, now=160.5)
    assert late.failure == "not ready within 60s: ConnectError: connection refused"
    assert not late.ready


def test_an_answer_after_the_deadline_still_counts_as_ready() -> None:
    verdict = judge(CHECK, OK, ready=False, started_at=0, failures=0, now=500)
    assert verdict.ready and verdict.became_ready and verdict.failure is None


def test_startup_expired() -> None:
    assert not startup_expired(CHECK, started_at=0, now=60)
    assert startup_expired(CHECK, started_at=0, now=60.01)


# -- running ------------------------------------------------------------------------------------


def test_a_ready_engine_fails_at_the_threshold_of_failures_in_a_row() -> None:
    one = judge(CHECK, SLOW, ready=True, started_at=0, failures=0, now=100)
    assert one == Verdict(ready=True, failures=1)
    two = judge(CHECK, SLOW, ready=True, started_at=0, failures=1, now=110)
    assert two == Verdict(ready=True, failures=2)
    three = judge(CHECK, SLOW, ready=True, started_at=0, failures=2, now=120)
    assert three.failures == 3
    assert three.failure == "unhealthy: 3 failed health checks in a row: ReadTimeout"


def test_an_answer_resets_the_count() -> None:
    verdict = run([OK, SLOW, SLOW, OK, SLOW, SLOW, OK])
    assert verdict == Verdict(ready=True, failures=0)
    assert run([OK, SLOW, SLOW, OK, SLOW, SLOW, SLOW]).failure is not None


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_the_threshold_is_the_specs(threshold: int) -> None:
    check = CHECK.model_copy(update={"failure_threshold": threshold})
    failures, verdict = 0, None
    for n in range(1, threshold + 1):
        verdict = judge(check, SLOW, ready=True, started_at=0, failures=failures, now=n)
        failures = verdict.failures
        assert (verdict.failure is not None) == (n == threshold)


def test_a_count_carried_over_from_earlier_runs_adds_up() -> None:
    """One-shot `apply` runs each probe once: the state file carries the count between them."""
    verdict = judge(CHECK, SLOW, ready=True, started_at=0, failures=2, now=1000)
    assert verdict.failure is not None


# -- when and how long --------------------------------------------------------------------------


def test_a_starting_engine_is_probed_on_every_pass_a_ready_one_every_interval() -> None:
    assert probe_due(CHECK, ready=False, last_probe_at=99.9, now=100)
    assert probe_due(CHECK, ready=True, last_probe_at=None, now=100)
    assert not probe_due(CHECK, ready=True, last_probe_at=95, now=100)
    assert probe_due(CHECK, ready=True, last_probe_at=90, now=100)


@pytest.mark.parametrize("timeout_s", [0.5, 5, 30])
def test_the_probe_timeout_is_the_specs_without_a_hidden_cap(timeout_s: float) -> None:
    assert probe_timeout_s(CHECK.model_copy(update={"timeout_s": timeout_s})) == timeout_s

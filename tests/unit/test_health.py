"""Health decisions (reconciler.core.health): startup timeout, failure threshold, probe timing,
and busy is not dead (a probe that timed out while the engine streams answers)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.health import (
    Activity,
    ProbeResult,
    Verdict,
    busy_window_s,
    excused,
    judge,
    judge_unanswered,
    probe_due,
    probe_timeout_s,
    startup_expired,
)
from reconciler.core.spec import HealthCheck

CHECK = HealthCheck(interval_s=10, timeout_s=5, failure_threshold=3, startup_timeout_s=60)
OK = ProbeResult(True)
REFUSED = ProbeResult(False, "ConnectError: connection refused")
SLOW = ProbeResult(False, "ReadTimeout", timed_out=True)
STREAMING = Activity(inflight=1, last_byte_age_s=0.2)
"""one request in flight through the gateway, the last bytes sent to its client 0.2 s ago"""


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


# -- busy is not dead -------------------------------------------------------------------------


def busy(probe: ProbeResult, activity: Activity | None = STREAMING) -> ProbeResult:
    return replace(probe, activity=activity)


def test_a_timeout_while_the_engine_streams_an_answer_is_not_a_failure() -> None:
    verdict = judge(CHECK, busy(SLOW), ready=True, started_at=0, failures=0, now=100)
    assert verdict == Verdict(ready=True, failures=0)
    # nor does it reset failures counted before: it says nothing either way
    verdict = judge(CHECK, busy(SLOW), ready=True, started_at=0, failures=2, now=100)
    assert verdict == Verdict(ready=True, failures=2)


def test_a_long_answer_outlasts_any_number_of_timed_out_probes() -> None:
    verdict = run([OK, *[busy(SLOW)] * 50])
    assert verdict == Verdict(ready=True, failures=0)


def test_requests_in_flight_without_bytes_for_too_long_do_not_excuse_a_timeout() -> None:
    window = busy_window_s(CHECK)
    assert window == CHECK.interval_s + CHECK.timeout_s
    silent = Activity(inflight=3, last_byte_age_s=window + 0.1)
    verdict = judge(CHECK, busy(SLOW, silent), ready=True, started_at=0, failures=2, now=100)
    assert verdict.failure == "unhealthy: 3 failed health checks in a row: ReadTimeout"
    never = Activity(inflight=3, last_byte_age_s=None)  # non-streamed answers send nothing yet
    assert judge(CHECK, busy(SLOW, never), ready=True, started_at=0, failures=2, now=1).failure


def test_recent_bytes_with_nothing_in_flight_do_not_excuse_a_timeout() -> None:
    idle = Activity(inflight=0, last_byte_age_s=0.1)  # the answer ended; the probe still hangs
    assert judge(CHECK, busy(SLOW, idle), ready=True, started_at=0, failures=2, now=1).failure


def test_only_a_timeout_is_excused_never_a_refusal_or_an_error() -> None:
    error = ProbeResult(False, "HTTP 500", status_code=500)
    for probe in (REFUSED, error):
        verdict = judge(CHECK, busy(probe), ready=True, started_at=0, failures=2, now=100)
        assert verdict.failure is not None, probe


def test_a_starting_engine_gets_no_excuse_past_its_deadline() -> None:
    verdict = judge(CHECK, busy(SLOW), ready=False, started_at=0, failures=0, now=61)
    assert verdict.failure == "not ready within 60s: ReadTimeout"


def test_a_probe_that_has_not_answered_yet_changes_nothing_but_the_startup_deadline() -> None:
    assert judge_unanswered(CHECK, ready=True, started_at=0, failures=2, now=1e6) == Verdict(
        ready=True, failures=2
    )
    assert judge_unanswered(CHECK, ready=False, started_at=0, failures=0, now=60) == Verdict(
        ready=False
    )
    late = judge_unanswered(CHECK, ready=False, started_at=0, failures=0, now=60.5)
    assert late.failure == "not ready within 60s: its probe has not answered"


checks = st.builds(
    HealthCheck,
    interval_s=st.floats(0.1, 3600),
    timeout_s=st.floats(0.1, 3600),
    failure_threshold=st.integers(1, 10),
    startup_timeout_s=st.floats(1, 3600),
)
activities = st.one_of(
    st.none(),
    st.builds(
        Activity,
        inflight=st.integers(0, 50),
        last_byte_age_s=st.one_of(st.none(), st.floats(0, 10_000)),
    ),
)
plain = st.sampled_from([OK, REFUSED, SLOW, ProbeResult(False, "HTTP 503", status_code=503)])


@given(checks, st.lists(st.tuples(plain, activities), max_size=30), st.data())
def test_excused_probes_are_invisible_to_the_verdicts(
    check: HealthCheck, probes: list[tuple[ProbeResult, Activity | None]], data: st.DataObject
) -> None:
    """Inserting excused probes anywhere in a ready engine's history changes no verdict: busy is
    neither healthy (no reset of the count) nor dead (no count)."""
    real = [replace(p, activity=a) for p, a in probes]
    busy_now = Activity(inflight=1, last_byte_age_s=data.draw(st.floats(0, busy_window_s(check))))
    excuse = busy(SLOW, busy_now)
    assert excused(check, excuse)
    mixed = []
    for probe in real:
        mixed += [excuse] * data.draw(st.integers(0, 3))
        mixed.append(probe)

    def verdicts(history: list[ProbeResult]) -> list[Verdict]:
        verdict, out = Verdict(ready=True), []
        for probe in history:
            verdict = judge(
                check, probe, ready=True, started_at=0, failures=verdict.failures, now=1e6
            )
            if not excused(check, probe):
                out.append(verdict)
            if verdict.failure:
                break
        return out

    assert verdicts(mixed) == verdicts(real)


@given(checks, plain, activities, st.floats(0, 1), st.integers(0, 5))
def test_an_excuse_holds_for_fresher_bytes_and_more_requests_and_needs_a_timeout(
    check: HealthCheck, probe: ProbeResult, activity: Activity | None, fresher: float, more: int
) -> None:
    result = replace(probe, activity=activity)
    if not probe.timed_out:
        assert not excused(check, result)
    if excused(check, result):
        assert activity is not None and activity.last_byte_age_s is not None
        busier = Activity(activity.inflight + more, activity.last_byte_age_s * fresher)
        assert excused(check, replace(probe, activity=busier))
        assert not excused(check, replace(probe, activity=Activity(0, 0.0)))
        stale = Activity(activity.inflight, busy_window_s(check) * 1.01 + 1e-6)
        assert not excused(check, replace(probe, activity=stale))

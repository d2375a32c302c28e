"""Restart bookkeeping (reconciler.core.health): backoff doubling, cap, jitter bounds, giving up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import reconciler.core.health as health_module
from reconciler.core.health import (
    JITTER,
    Failure,
    backoff_delay,
    backoff_s,
    cleared,
    record_failure,
    record_permanent,
    record_ready,
    waiting,
)
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.spec import RetryPolicy

POLICY = RetryPolicy(max_retries=3, backoff_s=5, max_backoff_s=300)
CRASH = Failure("engine exited with code 1", ("last line",))


def test_the_delay_doubles_from_the_first_backoff() -> None:
    delays = [backoff_s(POLICY, n) for n in range(1, 7)]
    assert delays == [5, 10, 20, 40, 80, 160]


def test_the_delay_stops_at_the_cap() -> None:
    assert backoff_s(POLICY, 7) == 300  # 320 capped
    assert backoff_s(POLICY, 50) == 300
    assert backoff_s(POLICY, 10**6) == 300, "a huge attempt number neither overflows nor escapes"


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 7, 40])
def test_jitter_spreads_the_delay_within_its_bounds_and_never_past_the_cap(attempt: int) -> None:
    plain = backoff_s(POLICY, attempt)
    low = backoff_s(POLICY, attempt, 1 - JITTER)
    high = backoff_s(POLICY, attempt, 1 + JITTER)
    assert low == pytest.approx(plain * (1 - JITTER))
    assert high == pytest.approx(min(plain * (1 + JITTER), POLICY.max_backoff_s))
    assert high <= POLICY.max_backoff_s
    if plain < POLICY.max_backoff_s / (1 + JITTER):
        assert high > plain, "below the cap, jitter spreads upwards too"


def test_jitter_outside_its_bounds_is_taken_as_the_nearest_bound() -> None:
    assert backoff_delay(10, 1, 1000, jitter=0.0) == pytest.approx(10 * (1 - JITTER))
    assert backoff_delay(10, 1, 1000, jitter=7.0) == pytest.approx(10 * (1 + JITTER))


@given(
    base=st.floats(0, 1000),
    attempt=st.integers(-5, 10**9),
    cap=st.floats(0, 10**6),
    jitter=st.floats(1 - JITTER, 1 + JITTER),
)
def test_every_delay_lies_between_the_jittered_floor_and_the_cap(
    base: float, attempt: int, cap: float, jitter: float
) -> None:
    delay = backoff_delay(base, attempt, cap, jitter)
    assert 0 <= delay <= cap
    assert delay >= min(base, cap) * (1 - JITTER) - 1e-9


def test_a_failure_schedules_the_restart_after_the_jittered_backoff() -> None:
    state = record_failure(InstanceRecord("m"), POLICY, CRASH, now=1000.0, jitter=1.1)
    assert state.restarts == 1 and state.restarts_total == 1 and not state.given_up
    assert state.next_retry_at == pytest.approx(1000.0 + 5 * 1.1)
    assert state.last_error == CRASH.message and state.last_log_lines == CRASH.log_lines
    again = record_failure(state, POLICY, CRASH, now=2000.0, jitter=1.0)
    assert again.next_retry_at == pytest.approx(2000.0 + 10)


def test_it_gives_up_after_max_retries_in_a_row() -> None:
    state = InstanceRecord("m")
    for _ in range(POLICY.max_retries):
        state = record_failure(state, POLICY, CRASH, now=0.0, jitter=1.0)
        assert not state.given_up
    state = record_failure(state, POLICY, CRASH, now=0.0, jitter=1.0)
    assert state.given_up and state.next_retry_at is None
    assert state.restarts_total == POLICY.max_retries + 1


def test_ready_again_restarts_the_backoff_from_the_beginning() -> None:
    state = InstanceRecord("m")
    for _ in range(2):
        state = record_failure(state, POLICY, CRASH, now=0.0, jitter=1.0)
    ready = record_ready(state)
    assert (ready.restarts, ready.next_retry_at, ready.restarts_total) == (0, None, 2)
    after = record_failure(ready, POLICY, CRASH, now=100.0, jitter=1.0)
    assert after.next_retry_at == pytest.approx(105.0), "the first delay again, not the third"


def test_a_permanent_failure_gives_up_at_once_and_clearing_keeps_the_history() -> None:
    state = record_permanent(InstanceRecord("m", restarts_total=4), "port 8000 is in use")
    assert state.given_up and state.next_retry_at is None
    assert state.last_error == "port 8000 is in use"
    fresh = cleared(state)
    assert not fresh.given_up and fresh.restarts == 0 and fresh.restarts_total == 4


def test_the_bookkeeping_leaves_the_status_and_placement_to_the_caller() -> None:
    placed = InstanceRecord("m", Status.running, pid=42, port=8100, gpus=(0,), memory_mb=900)
    for after in (
        record_failure(placed, POLICY, CRASH, now=0.0, jitter=1.0),
        record_permanent(placed, "port 8100 is in use"),
        record_ready(placed),
        cleared(placed),
    ):
        assert (after.status, after.pid, after.port, after.gpus, after.memory_mb) == (
            Status.running,
            42,
            8100,
            (0,),
            900,
        )


def test_waiting_only_before_the_retry_time() -> None:
    state = InstanceRecord("m", next_retry_at=50.0)
    assert waiting(state, 49.9)
    assert not waiting(state, 50.0)
    assert not waiting(InstanceRecord("m"), 0.0)


def test_the_core_draws_no_random_numbers() -> None:
    tree = ast.parse(Path(health_module.__file__).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "random" not in imported

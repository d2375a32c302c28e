"""An instance's status moves only along the transitions of its table (reconciler.core.instance).

The oracle is ALLOWED below, written out pair by pair from what the loop does (adopt, start,
become ready, fail, stop, preempt, an operator's restart, `stop-all`): the function must allow
exactly these pairs, refuse every other one, and change nothing but the status, the time of the
last change and the fields its caller names.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.instance import ForbiddenTransition, InstanceRecord, Status, transition

S = Status
ALLOWED: frozenset[tuple[Status, Status]] = frozenset(
    {
        # staying put: a pass that sees what the last one saw
        *((s, s) for s in Status),
        # started by the plan, or an engine found alive (adopted)
        (S.stopped, S.starting),
        (S.error, S.starting),
        (S.preempted, S.starting),
        (S.stopping, S.starting),
        # its first answer to a probe
        (S.starting, S.running),
        # crashed, hung, misplaced, or a start or stop that failed
        (S.starting, S.error),
        (S.running, S.error),
        (S.stopped, S.error),
        (S.preempted, S.error),
        (S.stopping, S.error),
        # stopped by the plan (`stopping` first), by `stop-all`, or for an operator's restart
        (S.starting, S.stopping),
        (S.running, S.stopping),
        (S.stopped, S.stopping),
        (S.error, S.stopping),
        (S.preempted, S.stopping),
        (S.stopping, S.stopped),
        (S.starting, S.stopped),
        (S.running, S.stopped),
        (S.error, S.stopped),
        (S.preempted, S.stopped),
        # preempted by a higher priority (only an engine the planner sees holding GPUs)
        (S.starting, S.preempted),
        (S.running, S.preempted),
    }
)

statuses = st.sampled_from(list(Status))
times = st.floats(0, 2e9, allow_nan=False)
texts = st.none() | st.text(max_size=20)
records = st.builds(
    InstanceRecord,
    id=st.text(min_size=1, max_size=10),
    status=statuses,
    pid=st.none() | st.integers(1, 2**22),
    container_id=texts,
    port=st.none() | st.integers(1, 65535),
    gpus=st.lists(st.integers(0, 7), max_size=3).map(tuple),
    memory_mb=st.integers(0, 10**6),
    spec_hash=texts,
    restarts=st.integers(0, 50),
    restarts_total=st.integers(0, 500),
    last_error=texts,
    last_log_lines=st.lists(st.text(max_size=10), max_size=3).map(tuple),
    last_transition=times,
    next_retry_at=st.none() | times,
    given_up=st.booleans(),
    started_at=st.none() | times,
    probe_failures=st.integers(0, 10),
)
# fields a caller may set along with the status, with values of their own types
changes = st.fixed_dictionaries(
    {},
    optional={
        "pid": st.none() | st.integers(1, 99),
        "container_id": texts,
        "probe_failures": st.integers(0, 10),
        "next_retry_at": st.none() | times,
        "given_up": st.booleans(),
        "last_error": texts,
    },
)


@given(record=records, to=statuses, now=times, named=changes)
def test_only_the_tables_moves_are_allowed_and_they_change_only_what_they_say(
    record: InstanceRecord, to: Status, now: float, named: dict[str, object]
) -> None:
    if (record.status, to) not in ALLOWED:
        with pytest.raises(ForbiddenTransition):
            transition(record, to, now, **named)
        return
    after = transition(record, to, now, **named)
    assert after.status == to
    expected_time = now if to != record.status else record.last_transition
    assert after.last_transition == expected_time, "staying put keeps the time it was entered"
    for f in dataclasses.fields(InstanceRecord):
        if f.name in ("status", "last_transition"):
            continue
        wanted = named[f.name] if f.name in named else getattr(record, f.name)
        assert getattr(after, f.name) == wanted, f.name


@pytest.mark.parametrize(("before", "after"), list(itertools.product(Status, Status)))
def test_every_pair_is_decided_as_the_table_says(before: Status, after: Status) -> None:
    record = InstanceRecord("m", before, last_transition=1.0)
    if (before, after) in ALLOWED:
        assert transition(record, after, 2.0).status == after
    else:
        with pytest.raises(ForbiddenTransition, match=f"m: {before} -> {after}"):
            transition(record, after, 2.0)


def test_running_is_reached_only_through_starting() -> None:
    """What a status means to a user: `running` says the engine answered its probe."""
    into_running = {before for before, after in ALLOWED if after == S.running}
    assert into_running == {S.starting, S.running}


def test_the_status_and_its_time_are_not_among_the_callers_fields() -> None:
    record = InstanceRecord("m", S.starting)
    with pytest.raises(TypeError):
        transition(record, S.running, 1.0, status=S.error)
    with pytest.raises(TypeError):
        transition(record, S.running, 1.0, last_transition=0.0)

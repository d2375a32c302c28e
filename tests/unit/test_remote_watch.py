"""A remote model's record follows its endpoint's probes (reconciler.loop.remote_watch's pure part).

The oracle is a table written out here: after a probe, the status is `running` when it answered
and `error` when not, whatever came before; the events are the changes an operator wants told
(ready, recovered, error), never a repeat of the same failure.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.events import EventKind
from reconciler.core.health import ProbeResult
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.spec import ModelSpec
from reconciler.loop.remote_watch import (
    arrive,
    failure_reason,
    probe_url,
    retire,
    settle,
)

S, K = Status, EventKind

# (status before, answered, same reason as the last error) -> (status after, event kind)
AFTER_PROBE: dict[tuple[Status, bool, bool], tuple[Status, EventKind | None]] = {
    (S.starting, True, False): (S.running, K.ready),
    (S.starting, False, False): (S.error, K.error),
    (S.running, True, False): (S.running, None),
    (S.running, False, False): (S.error, K.error),
    (S.error, True, False): (S.running, K.recovered),
    (S.error, False, False): (S.error, K.error),  # a new reason is news
    (S.error, False, True): (S.error, None),  # the same failure again is not
}


def remote_spec(**fields: object) -> ModelSpec:
    spec: dict[str, object] = {
        "id": "cloud",
        "framework": "remote",
        "endpoint": "https://api.example.com/v1",
    }
    return ModelSpec.model_validate({**spec, **fields})


@pytest.mark.parametrize(("before", "answered", "same"), sorted(AFTER_PROBE, key=str))
def test_a_probe_sets_the_status_the_table_says(before: Status, answered: bool, same: bool) -> None:
    record = InstanceRecord("cloud", before, last_error="HTTP 500" if same else None)
    after, news = settle(record, answered, None if answered else "HTTP 500", now=50.0)
    status, kind = AFTER_PROBE[(before, answered, same)]
    assert after.status == status
    assert (news.kind if news else None) == kind
    assert after.last_error == (None if answered else "HTTP 500")


outcomes = st.lists(
    st.tuples(st.booleans(), st.sampled_from(["HTTP 401", "connection refused"])),
    min_size=1,
    max_size=12,
)


@given(outcomes)
def test_a_run_of_probes_ends_as_the_last_one_said_and_tells_each_change_once(
    run: list[tuple[bool, str]],
) -> None:
    record = InstanceRecord("cloud", S.starting)
    told: list[EventKind] = []
    for step, (answered, reason) in enumerate(run):
        record, news = settle(record, answered, reason, now=float(step))
        told += [news.kind] if news else []
    last_answered, last_reason = run[-1]
    assert record.status == (S.running if last_answered else S.error)
    assert record.last_error == (None if last_answered else last_reason)
    # an event exactly where what an operator sees changed: status, or the reason of an error
    seen = [("up", None) if a else ("down", r) for a, r in run]
    changes = sum(1 for i, now in enumerate(seen) if i == 0 or now != seen[i - 1])
    assert len(told) == changes


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (ProbeResult(False, "HTTP 401", 401), "HTTP 401"),
        (ProbeResult(False, "ReadTimeout: timed out", timed_out=True), "no answer within 5s"),
        (ProbeResult(False, "ConnectError: [Errno 111] Connection refused"), "connection refused"),
    ],
)
def test_a_failed_probe_is_told_in_an_operators_words(result: ProbeResult, reason: str) -> None:
    assert failure_reason(result, 5.0) == reason


def test_a_certificate_that_does_not_verify_is_told_as_such() -> None:
    error = "ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    assert failure_reason(ProbeResult(False, error), 5.0).startswith("TLS verification failed")


def test_the_probe_goes_to_the_health_path_under_the_endpoint() -> None:
    assert probe_url(remote_spec()) == "https://api.example.com/v1/models"
    spec = remote_spec(endpoint="https://h.example/v1/", health_check={"path": "/health"})
    assert probe_url(spec) == "https://h.example/v1/health"


def test_a_model_that_was_an_engine_keeps_nothing_of_it() -> None:
    engine = InstanceRecord(
        "cloud", S.stopped, pid=42, port=8001, gpus=(0,), memory_mb=900, restarts_total=3
    )
    record = arrive(engine, remote_spec(), now=10.0)
    assert record.status == S.starting and record.started_at == 10.0
    assert (record.pid, record.port, record.gpus, record.memory_mb) == (None, None, (), 0)
    assert record.restarts_total == 3 and record.spec_hash == remote_spec().spec_hash()


def test_a_probed_model_keeps_its_status_until_the_next_probe() -> None:
    for status in (S.running, S.error):
        assert arrive(InstanceRecord("cloud", status), remote_spec(), 10.0).status == status


def test_a_disabled_remote_model_is_stopped() -> None:
    record = retire(InstanceRecord("cloud", S.error, last_error="HTTP 500"), now=3.0)
    assert (record.status, record.last_error) == (S.stopped, None)

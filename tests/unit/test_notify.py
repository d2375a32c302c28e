"""Notifications without a network: which events notify, what a notification says, how targets
are written in cluster.yaml. Delivery to real receivers is in
tests/integration/test_notify_delivery.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from reconciler.core.cluster import (
    NOTIFICATION_KINDS,
    ClusterSpec,
    NotificationTarget,
    cluster_json_schema,
)
from reconciler.notify import (
    EventClassifier,
    Notification,
    Notifier,
    RetryPolicy,
    missing_secrets,
    redact_url,
)


def event(kind: str, model: str | None = "qwen2-7b", message: str = "", **extra: Any) -> dict:
    return {"time": 1700000000.0, "kind": kind, "model": model, "message": message, **extra}


def classify_all(*events: dict) -> list[str | None]:
    classifier = EventClassifier()
    return [classifier.classify(e) for e in events]


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# ---- which events notify --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("error", "error"),
        ("gave-up", "error"),
        ("crashed", "error"),
        ("preempt", "preempted"),
        ("unschedulable", "unschedulable"),
        ("desired-invalid", "invalid"),
        ("start", None),
        ("stop", None),
        ("ready", None),  # ready without trouble before it is routine
        ("applied", None),
        ("restart-requested", None),
    ],
)
def test_event_kinds_map_to_notification_kinds(kind: str, expected: str | None) -> None:
    assert classify_all(event(kind)) == [expected]


def test_a_crash_loop_notifies_once_then_on_giving_up_then_on_recovery() -> None:
    assert classify_all(
        event("crashed", message="engine exited with code 1; restart #1 planned"),
        event("start"),
        event("crashed", message="engine exited with code 1; restart #2 planned"),
        event("gave-up", message="gave up after 2 restart(s)"),
        event("restart-requested"),
        event("start"),
        event("ready", message="ready after 12.0s"),
        event("ready"),
    ) == ["error", None, None, "error", None, None, "recovered", None]


def test_recovery_is_per_model() -> None:
    assert classify_all(
        event("error", model="a"), event("ready", model="b"), event("ready", model="a")
    ) == ["error", None, "recovered"]


def test_a_valid_desired_state_after_an_invalid_one_is_a_recovery() -> None:
    assert classify_all(
        event("applied", model=None),
        event("desired-invalid", model=None, message="2 problem(s); nothing changed"),
        event("applied", model=None, revision="abc"),
        event("applied", model=None, revision="def"),
    ) == [None, "invalid", "recovered", None]


def test_an_explicit_recovered_event_counts_only_after_trouble() -> None:
    events = [event("recovered"), event("error"), event("recovered"), event("ready")]
    assert classify_all(*events) == [None, "error", "recovered", None]


def test_unschedulable_notifies_once_until_the_model_is_started() -> None:
    assert classify_all(
        event("unschedulable"),
        event("unschedulable"),
        event("start"),
        event("preempt"),
        event("unschedulable"),
    ) == ["unschedulable", None, None, "preempted", "unschedulable"]


# ---- what a notification says ---------------------------------------------------------------


def a_notification(kind: str = "error", model: str | None = "qwen2-7b") -> Notification:
    source = event("gave-up", model=model, message="engine exited with code 1; gave up")
    return Notification(kind, model, source["message"], source["time"], "gpu1", source)


def test_json_payload_carries_the_event() -> None:
    payload = a_notification().to_json()
    assert payload == {
        "source": "reconciler",
        "host": "gpu1",
        "kind": "error",
        "model": "qwen2-7b",
        "message": "engine exited with code 1; gave up",
        "time": 1700000000.0,
        "event": event("gave-up", message="engine exited with code 1; gave up"),
    }
    json.dumps(payload)


def test_text_names_host_kind_and_subject() -> None:
    assert a_notification().text() == (
        "[reconciler@gpu1] error: model qwen2-7b\nengine exited with code 1; gave up"
    )
    assert a_notification("invalid", None).title() == "[reconciler@gpu1] invalid: desired state"


def test_logged_urls_keep_only_scheme_and_host() -> None:
    secret = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    assert redact_url(secret) == "https://hooks.slack.com"
    assert redact_url("http://127.0.0.1:9000/hook?token=x") == "http://127.0.0.1:9000"


def test_backoff_doubles_up_to_the_cap() -> None:
    assert RetryPolicy(5, 1.0, 5.0).delays() == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert RetryPolicy(0, 1.0, 5.0).delays() == []


# ---- the notifier without a receiver --------------------------------------------------------


def webhook(name: str, events: list[str] | None = None) -> NotificationTarget:
    # url_env that is not set: every delivery fails at once, permanently, and is counted
    fields: dict[str, Any] = {
        "type": "webhook",
        "name": name,
        "url_env": "RECONCILER_SECRET_UNSET_TEST_URL",
    }
    if events is not None:
        fields["events"] = events
    return NotificationTarget.model_validate(fields)


def test_only_subscribed_targets_get_a_notification() -> None:
    notifier = Notifier([webhook("all"), webhook("errors", ["error"])], environ={})
    assert notifier.notify(event("preempt")) == "preempted"
    assert notifier.notify(event("start")) is None
    assert notifier.close(timeout_s=5)
    counts = notifier.counts()
    assert counts[("all", "failed")] == 1  # tried, and failed: the URL's variable is not set
    assert counts[("errors", "failed")] == 0  # never tried
    assert counts[("errors", "sent")] == 0


def test_targets_without_a_name_are_labelled_by_type_and_position() -> None:
    targets = [NotificationTarget(type="slack", url_env="RECONCILER_SECRET_A"), webhook("mine")]
    notifier = Notifier(targets, environ={})
    assert {label for label, _ in notifier.counts()} == {"slack-0", "mine"}
    notifier.close()


def test_reconfiguring_keeps_unchanged_targets_and_their_counts() -> None:
    notifier = Notifier([webhook("a")], environ={})
    notifier.notify(event("error"))
    wait_for(lambda: notifier.counts()[("a", "failed")] == 1)
    notifier.configure([webhook("a"), webhook("b")])
    notifier.notify(event("preempt"))
    assert notifier.close(timeout_s=5)
    counts = notifier.counts()
    assert counts[("a", "failed")] == 2
    assert counts[("b", "failed")] == 1


def test_configuring_the_same_targets_again_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the daemon may hand the desired state's targets over after every pass
    with caplog.at_level("WARNING", logger="reconciler.notify"):
        notifier = Notifier([webhook("a")], environ={})
        notifier.configure([webhook("a")])
    assert [r.getMessage() for r in caplog.records] == [
        "notifications: a: environment variable RECONCILER_SECRET_UNSET_TEST_URL is not set"
    ]
    notifier.close()


def test_malformed_events_and_events_after_close_are_harmless() -> None:
    notifier = Notifier([webhook("a")], environ={})
    assert notifier.notify("not an event") is None  # type: ignore[arg-type]
    assert notifier.notify({}) is None
    assert notifier.notify({"kind": "error", "model": ["not", "an", "id"]}) == "error"
    assert notifier.close()
    assert notifier.notify(event("error", model="b")) == "error"
    assert notifier.counts()[("a", "failed")] == 1  # the one before close() only


def test_missing_secrets_are_listed_for_the_startup_log() -> None:
    targets = [
        NotificationTarget(type="slack", url_env="RECONCILER_SECRET_SLACK_URL"),
        NotificationTarget.model_validate(
            {"type": "email", "host": "smtp", "from": "r@x", "to": ["o@x"],
             "username_env": "RECONCILER_SECRET_SMTP_USER",
             "password_env": "RECONCILER_SECRET_SMTP_PASSWORD"}
        ),
        NotificationTarget(type="webhook", url="https://example.com/hook"),
    ]  # fmt: skip
    assert missing_secrets(targets, {"RECONCILER_SECRET_SMTP_USER": "me"}) == [
        "slack-0: environment variable RECONCILER_SECRET_SLACK_URL is not set",
        "email-1: environment variable RECONCILER_SECRET_SMTP_PASSWORD is not set",
    ]


# ---- targets in cluster.yaml ----------------------------------------------------------------

GOOD_TARGETS = [
    {"type": "webhook", "url": "http://127.0.0.1:9000/reconciler"},
    {
        "type": "slack",
        "url_env": "RECONCILER_SECRET_SLACK_WEBHOOK_URL",
        "events": ["error", "recovered"],
    },
    {
        "type": "email",
        "name": "oncall",
        "host": "smtp.example.com",
        "port": 587,
        "from": "reconciler@example.com",
        "to": ["oncall@example.com"],
        "username_env": "RECONCILER_SECRET_SMTP_USER",
        "password_env": "RECONCILER_SECRET_SMTP_PASSWORD",
        "starttls": True,
    },
]


def test_good_targets_pass_the_schema_and_the_model_and_survive_a_dump() -> None:
    cluster = {"gpus": "auto", "notifications": GOOD_TARGETS}
    jsonschema.validate(cluster, cluster_json_schema())
    spec = ClusterSpec.model_validate(cluster)
    assert spec.notifications[2].from_ == "reconciler@example.com"
    assert spec.notifications[0].events == list(NOTIFICATION_KINDS)
    # the reconciler keeps the last valid desired state as a JSON dump and reads it back
    assert ClusterSpec.model_validate(spec.model_dump(mode="json")) == spec
    assert spec.model_dump(mode="json")["notifications"][2]["from"] == "reconciler@example.com"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"type": "webhook"}, "a webhook target needs exactly one of url or url_env"),
        (
            {"type": "slack", "url": "https://x", "url_env": "RECONCILER_SECRET_X"},
            "a slack target needs exactly one of url or url_env",
        ),
        ({"type": "email", "host": "smtp", "to": ["a@b"]}, "an email target needs from"),
        ({"type": "webhook", "url": "https://x", "host": "smtp"}, "host: not a field of a webhook"),
        (
            {
                "type": "email",
                "host": "h",
                "from": "a@b",
                "to": ["c@d"],
                "username_env": "RECONCILER_SECRET_U",
            },
            "username_env and password_env go together",
        ),
    ],
)
def test_rules_per_target_type(target: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NotificationTarget.model_validate(target)


@pytest.mark.parametrize(
    "target",
    [
        {"type": "sms", "url": "https://x"},
        {"type": "webhook", "url": "ftp://x"},
        {"type": "webhook", "url_env": "not a name"},
        {"type": "webhook", "url": "https://x", "events": ["everything"]},
        {"type": "webhook", "url": "https://x", "urll": "typo"},
        {"type": "email", "host": "h", "from": "a@b", "to": ["c@d"], "password": "in git!"},
    ],
)
def test_the_schema_rejects_bad_targets(target: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"notifications": [target]}, cluster_json_schema())

"""Notifications of important events: a JSON webhook, a Slack incoming webhook, e-mail over SMTP.

Targets come from cluster.yaml's `notifications:` list (reconciler.core.spec.NotificationTarget);
their secrets (a URL that carries a token, SMTP credentials) come from environment variables the
spec names, read at delivery time, so they never live in git and can be rotated by restarting
nothing but the environment file.

The reconcile loop must never wait for a notification: `notify()` only classifies the event and
puts it on each subscribed target's bounded queue. Every target has its own worker thread, so a
dead or hanging target delays only its own deliveries; retries back off exponentially on that
thread. A full queue drops the notification (logged and counted): a flood of events is better
lost than a loop slowed down or memory spent without bound.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import smtplib
import socket
import ssl
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlsplit

import httpx

from reconciler.core.spec import NotificationTarget

log = logging.getLogger("reconciler.notify")

OUTCOMES = ("sent", "failed", "dropped")
"""sent: delivered; failed: every attempt failed (or a permanent error); dropped: the target's
queue was full, or the notifier closed before it could be sent."""

DESIRED_STATE = "desired state"
"""How notifications name the subject of an event that concerns no model."""

# HTTP statuses worth another attempt: the receiver is overloaded or briefly broken.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Notification:
    """One notification, as every target renders it."""

    kind: str
    """error | preempted | unschedulable | invalid | recovered"""
    model: str | None
    message: str
    time: float
    host: str
    event: Mapping[str, Any] = field(default_factory=dict)
    """the reconciler event it came from"""

    @property
    def subject(self) -> str:
        return f"model {self.model}" if self.model else DESIRED_STATE

    def title(self) -> str:
        return f"[reconciler@{self.host}] {self.kind}: {self.subject}"

    def text(self) -> str:
        return f"{self.title()}\n{self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": "reconciler",
            "host": self.host,
            "kind": self.kind,
            "model": self.model,
            "message": self.message,
            "time": self.time,
            "event": dict(self.event),
        }


class DeliveryError(Exception):
    """One delivery attempt failed; `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


# ---- which events are worth a notification ---------------------------------------------------


class EventClassifier:
    """Maps reconciler events to notification kinds, remembering what is in trouble.

    A crash loop notifies once (its first crash) and once more when the retries give up, not on
    every restart; `recovered` is sent only for something that was reported in trouble, when it
    is ready (a model) or valid (the desired state) again.
    """

    def __init__(self) -> None:
        self._trouble: set[str | None] = set()
        """model ids in error, and None while the desired state is invalid"""
        self._unschedulable: set[str | None] = set()
        """models reported unschedulable and not started since"""

    def classify(self, event: Mapping[str, Any]) -> str | None:
        kind, model = event.get("kind"), event.get("model")
        if not isinstance(model, str):  # None: the event is about the desired state
            model = None
        if kind in ("error", "gave-up"):
            self._trouble.add(model)
            return "error"
        if kind == "crashed":
            first = model not in self._trouble
            self._trouble.add(model)
            return "error" if first else None
        if kind == "preempt":
            return "preempted"
        if kind == "unschedulable":
            first = model not in self._unschedulable
            self._unschedulable.add(model)
            return "unschedulable" if first else None
        if kind in ("start", "stop"):  # placed, or no longer wanted: a new episode may follow
            self._unschedulable.discard(model)
        if kind == "desired-invalid":
            self._trouble.add(None)
            return "invalid"
        if kind in ("ready", "recovered", "applied") and model in self._trouble:
            self._trouble.discard(model)
            return "recovered"
        return None


def recovered_message(event: Mapping[str, Any]) -> str:
    model = event.get("model")
    if model is None:
        return "the desired state is valid again"
    return f"{model} is ready again" + (f" ({event['message']})" if event.get("message") else "")


# ---- the notifier --------------------------------------------------------------------------


class Notifier:
    """Delivers notifications to the configured targets, off the caller's thread.

    The daemon calls `notify(event)` for every event it records, `configure(targets)` when
    cluster.yaml's notifications change, and `close()` at shutdown. `counts()` feeds the
    reconciler_notifications_total metric.
    """

    def __init__(
        self,
        targets: Sequence[NotificationTarget] = (),
        *,
        environ: Mapping[str, str] | None = None,
        queue_size: int = 100,
        retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        host: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._environ = os.environ if environ is None else environ
        self._policy = RetryPolicy(retries, backoff_s, max_backoff_s)
        self._queue_size = queue_size
        self._host = host or socket.gethostname()
        self._clock = clock
        self._lock = threading.Lock()
        self._classifier = EventClassifier()
        self._counts: Tally[tuple[str, str]] = Tally()
        self._workers: dict[str, _Worker] = {}
        self._closed = False
        self.configure(targets)

    def configure(self, targets: Sequence[NotificationTarget]) -> None:
        """Use these targets from now on. An unchanged target keeps its worker and queue; a
        removed one delivers what it already holds, then its thread ends. Cheap when nothing
        changed, so the daemon may call it after every pass."""
        wanted = {_key(i, t): (i, t) for i, t in enumerate(targets)}
        with self._lock:
            if self._closed or wanted.keys() == self._workers.keys():
                return
            for key in set(self._workers) - set(wanted):
                self._workers.pop(key).finish()
            for key, (index, target) in wanted.items():
                if key not in self._workers:
                    self._workers[key] = self._start_worker(index, target)
        for problem in missing_secrets(targets, self._environ):
            log.warning("notifications: %s", problem)

    def notify(self, event: Mapping[str, Any]) -> str | None:
        """Queue the notification this event calls for, if any; returns its kind. Never blocks
        and never raises on a malformed event."""
        if not isinstance(event, Mapping):
            return None
        with self._lock:
            kind = self._classifier.classify(event)
            workers = [] if kind is None or self._closed else list(self._workers.values())
        if kind is None:
            return None
        notification = self._notification(kind, event)
        for worker in workers:
            if kind in worker.target.events and not worker.offer(notification):
                log.warning(
                    "notifications: %s queue is full (%d); dropped %s",
                    worker.label,
                    self._queue_size,
                    notification.title(),
                )
                self._count(worker.label, "dropped")
        return kind

    def counts(self) -> dict[tuple[str, str], int]:
        """(target label, outcome) -> notifications so far; outcome is sent, failed, dropped."""
        with self._lock:
            return dict(self._counts)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Deliver what is queued for up to `timeout_s`, then give up on the rest (counted as
        dropped). True when every queue was drained in time."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._closed = True
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.finish()
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        stuck = [w for w in workers if w.is_alive()]
        for worker in stuck:  # a hanging request still ends by its own timeout: daemon thread
            log.warning("notifications: %s did not finish in %gs", worker.label, timeout_s)
            worker.abandon()
        return not stuck

    # -- internals ---------------------------------------------------------------------------

    def _notification(self, kind: str, event: Mapping[str, Any]) -> Notification:
        model = event.get("model")
        text = str(event.get("message") or "")
        message = recovered_message(event) if kind == "recovered" else text
        when = event.get("time")
        return Notification(
            kind=kind,
            model=model if isinstance(model, str) else None,
            message=message,
            time=float(when) if isinstance(when, int | float) else self._clock(),
            host=self._host,
            event=dict(event),
        )

    def _start_worker(self, index: int, target: NotificationTarget) -> _Worker:
        label = target.name or f"{target.type}-{index}"
        for outcome in OUTCOMES:  # zeros from the start, so that a dashboard shows the target
            self._counts.setdefault((label, outcome), 0)
        delivery = _Delivery(target, self._environ)
        worker = _Worker(label, target, delivery, self._queue_size, self._policy, self._count)
        worker.start()
        return worker

    def _count(self, label: str, outcome: str) -> None:
        with self._lock:
            self._counts[(label, outcome)] += 1


def missing_secrets(
    targets: Sequence[NotificationTarget], environ: Mapping[str, str] | None = None
) -> list[str]:
    """One line per environment variable a target names that is not set (for start-up logs)."""
    env = os.environ if environ is None else environ
    problems = []
    for index, target in enumerate(targets):
        label = target.name or f"{target.type}-{index}"
        for name in (target.url_env, target.username_env, target.password_env):
            if name and not env.get(name):
                problems.append(f"{label}: environment variable {name} is not set")
    return problems


def _key(index: int, target: NotificationTarget) -> str:
    return f"{index}:{target.model_dump_json()}"


# ---- one worker per target -----------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    backoff_s: float
    max_backoff_s: float

    def delays(self) -> list[float]:
        """Waits before the 2nd, 3rd... attempt: doubling from backoff_s, capped."""
        return [min(self.backoff_s * 2**i, self.max_backoff_s) for i in range(self.retries)]


_FINISH = object()


class _Worker(threading.Thread):
    """Delivers one target's notifications in order, with retries, on its own thread."""

    def __init__(
        self,
        label: str,
        target: NotificationTarget,
        delivery: _Delivery,
        queue_size: int,
        policy: RetryPolicy,
        count: Callable[[str, str], None],
    ) -> None:
        # daemon: a request hanging past close() must not keep the process alive
        super().__init__(name=f"notify-{label}", daemon=True)
        self.label, self.target = label, target
        self._delivery, self._policy, self._count = delivery, policy, count
        self._queue_size = queue_size
        # Unbounded underneath, bounded by offer(): finish() can always add its marker.
        self._queue: queue.Queue[Any] = queue.Queue()
        self._offer_lock = threading.Lock()
        self._abandoned = threading.Event()

    def offer(self, notification: Notification) -> bool:
        with self._offer_lock:
            if self._queue.qsize() >= self._queue_size:
                return False
            self._queue.put_nowait(notification)
            return True

    def finish(self) -> None:
        """End after delivering what is queued."""
        self._queue.put(_FINISH)

    def abandon(self) -> None:
        """Stop retrying and drop what is left (close() ran out of time)."""
        self._abandoned.set()

    def run(self) -> None:
        try:
            while (item := self._queue.get()) is not _FINISH:
                if self._abandoned.is_set():
                    self._count(self.label, "dropped")
                else:
                    self._deliver(item)
        finally:
            self._delivery.close()

    def _deliver(self, notification: Notification) -> None:
        delays = self._policy.delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                self._delivery.send(notification)
            except DeliveryError as exc:
                if not exc.retryable or not delays or self._abandoned.is_set():
                    self._give_up(notification, exc, attempt)
                    return
                delay = delays.pop(0)
                log.info("notifications: %s: %s; retrying in %gs", self.label, exc, delay)
                if self._abandoned.wait(delay):
                    self._give_up(notification, exc, attempt)
                    return
            except Exception as exc:  # a bug in a sender must not kill the worker thread
                log.exception("notifications: %s: unexpected error", self.label)
                self._give_up(notification, exc, attempt)
                return
            else:
                self._count(self.label, "sent")
                return

    def _give_up(self, notification: Notification, exc: Exception, attempts: int) -> None:
        log.warning(
            "notifications: %s: gave up on %s after %d attempt(s): %s",
            self.label,
            notification.title(),
            attempts,
            exc,
        )
        self._count(self.label, "failed")


# ---- delivery ------------------------------------------------------------------------------


class _Delivery:
    """How one target sends: its HTTP client (connections reused between notifications) or
    its SMTP settings."""

    def __init__(self, target: NotificationTarget, environ: Mapping[str, str]) -> None:
        self.target, self.environ = target, environ
        self.client = None
        if target.type != "email":
            self.client = httpx.Client(timeout=target.timeout_s, follow_redirects=False)

    def send(self, notification: Notification) -> None:
        if self.client is None:
            send_email(self.target, notification, self.environ)
            return
        url = _url(self.target, self.environ)
        if self.target.type == "slack":
            post_json(self.client, url, {"text": notification.text()})
        else:
            post_json(self.client, url, notification.to_json())

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def _url(target: NotificationTarget, environ: Mapping[str, str]) -> str:
    """The target's URL; read at delivery time, so a rotated secret is picked up."""
    if target.url is not None:
        return target.url
    url = environ.get(target.url_env or "")
    if not url:
        raise DeliveryError(f"environment variable {target.url_env} is not set", retryable=False)
    return url


def post_json(client: httpx.Client, url: str, payload: Mapping[str, Any]) -> None:
    """POST a JSON document. Messages name only the scheme and host: the path may be a secret
    (a Slack webhook URL is its own credential)."""
    where = redact_url(url)
    body = json.dumps(payload, default=str).encode()  # event extras may not be JSON types
    try:
        response = client.post(url, content=body, headers={"Content-Type": "application/json"})
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:  # a bad setting, not a blip
        raise DeliveryError(f"{where}: {type(exc).__name__}", retryable=False) from None
    except httpx.TimeoutException:
        raise DeliveryError(f"{where}: timed out", retryable=True) from None
    except httpx.TransportError as exc:
        raise DeliveryError(f"{where}: {type(exc).__name__}", retryable=True) from None
    if response.is_success:
        return
    retryable = response.status_code in _RETRY_STATUSES
    raise DeliveryError(f"{where}: HTTP {response.status_code}", retryable=retryable)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def send_email(
    target: NotificationTarget, notification: Notification, environ: Mapping[str, str]
) -> None:
    """Send one e-mail: STARTTLS (certificate verified) unless `starttls: false`, and log in
    when credentials are configured."""
    starttls = target.starttls is not False
    port = target.port or (587 if starttls else 25)
    credentials = _smtp_credentials(target, environ)
    message = _email(target, notification)
    where = f"smtp://{target.host}:{port}"
    try:
        with smtplib.SMTP(target.host or "", port, timeout=target.timeout_s) as smtp:
            if starttls:
                smtp.starttls(context=ssl.create_default_context())
            if credentials:
                smtp.login(*credentials)
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        retryable = all(400 <= code < 500 for code in codes)
        raise DeliveryError(f"{where}: recipients refused {codes}", retryable=retryable) from None
    except smtplib.SMTPResponseException as exc:  # 4xx: try again later; 5xx: permanent
        retryable = 400 <= exc.smtp_code < 500
        raise DeliveryError(f"{where}: SMTP {exc.smtp_code}", retryable=retryable) from None
    except (smtplib.SMTPNotSupportedError, ssl.SSLError) as exc:  # a setting to fix, not a blip
        raise DeliveryError(f"{where}: {exc}", retryable=False) from None
    except (OSError, smtplib.SMTPException) as exc:  # refused, reset, timed out, disconnected
        raise DeliveryError(f"{where}: {exc or type(exc).__name__}", retryable=True) from None


def _smtp_credentials(
    target: NotificationTarget, environ: Mapping[str, str]
) -> tuple[str, str] | None:
    if not target.username_env or not target.password_env:
        return None
    user, password = environ.get(target.username_env), environ.get(target.password_env)
    if not user or not password:
        missing = target.username_env if not user else target.password_env
        raise DeliveryError(f"environment variable {missing} is not set", retryable=False)
    return user, password


def _email(target: NotificationTarget, notification: Notification) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = notification.title()
    message["From"] = target.from_ or ""
    message["To"] = ", ".join(target.to)
    message["Date"] = formatdate(notification.time, localtime=True)
    message["Message-ID"] = make_msgid(domain=notification.host)
    details = json.dumps(dict(notification.event), indent=2, sort_keys=True, default=str)
    message.set_content(f"{notification.message}\n\nEvent:\n{details}\n")
    return message

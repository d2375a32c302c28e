"""Notifications of important events: a JSON webhook, a Slack incoming webhook, e-mail over SMTP.

Targets come from cluster.yaml's `notifications:` list (reconciler.core.spec.NotificationTarget);
their secrets (a URL that carries a token, SMTP credentials) come from RECONCILER_SECRET_*
variables the spec names, read at delivery time, so they never live in git. A credential goes only
where the host binds it (reconciler.core.secrets): a target that would send one elsewhere is
refused when it is configured (an error in the log) and at every delivery.

The reconcile loop must never wait for a notification: `notify()` only classifies the event and
puts it on each subscribed target's bounded queue. Every target has its own worker thread, so a
dead or hanging target delays only its own deliveries; retries back off exponentially on that
thread. A full queue drops the notification (logged and counted): a flood of events is better
lost than a loop slowed down or memory spent without bound.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.core.cluster import NotificationTarget
from reconciler.core.events import EventKind
from reconciler.core.health import backoff_delay
from reconciler.core.secrets import credential_refusals, target_label
from reconciler.notify.delivery import (
    DESIRED_STATE,
    DeliveryError,
    Notification,
    _Delivery,
    post_json,
    send_email,
)
from reconciler.source.repo import redact_url

__all__ = [
    "DESIRED_STATE",
    "OUTCOMES",
    "DeliveryError",
    "EventClassifier",
    "Notification",
    "Notifier",
    "RetryPolicy",
    "missing_secrets",
    "post_json",
    "recovered_message",
    "redact_url",
    "refused_secrets",
    "send_email",
]

log = logging.getLogger("reconciler.notify")

OUTCOMES = ("sent", "failed", "dropped")
"""sent: delivered; failed: every attempt failed (or a permanent error); dropped: the target's
queue was full, or the notifier closed before it could be sent."""


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

    def classify(self, event: Mapping[str, object]) -> str | None:
        kind, model = event.get("kind"), event.get("model")
        if not isinstance(model, str):  # None: the event is about the desired state
            model = None
        if kind in (EventKind.error, EventKind.gave_up):
            self._trouble.add(model)
            return "error"
        if kind == EventKind.crashed:
            first = model not in self._trouble
            self._trouble.add(model)
            return "error" if first else None
        if kind == EventKind.preempt:
            return "preempted"
        if kind == EventKind.unschedulable:
            first = model not in self._unschedulable
            self._unschedulable.add(model)
            return "unschedulable" if first else None
        if kind in (
            EventKind.start,
            EventKind.stop,
        ):  # placed, or no longer wanted: a new episode may follow
            self._unschedulable.discard(model)
        if kind == EventKind.desired_invalid:
            self._trouble.add(None)
            return "invalid"
        if (
            kind in (EventKind.ready, EventKind.recovered, EventKind.applied)
            and model in self._trouble
        ):
            self._trouble.discard(model)
            return "recovered"
        return None


def recovered_message(event: Mapping[str, object]) -> str:
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

    def configure(self, targets: Sequence[NotificationTarget]) -> list[str]:
        """Use these targets from now on. An unchanged target keeps its worker and queue; a
        removed one delivers what it already holds, then its thread ends. Cheap when nothing
        changed, so the daemon may call it after every pass. Returns the targets refused for
        sending a secret where the host did not bind it, once per new configuration (the
        daemon records them as error events)."""
        wanted = {_key(i, t): (i, t) for i, t in enumerate(targets)}
        with self._lock:
            if self._closed or wanted.keys() == self._workers.keys():
                return []
            for key in set(self._workers) - set(wanted):
                self._workers.pop(key).finish()
            for key, (index, target) in wanted.items():
                if key not in self._workers:
                    self._workers[key] = self._start_worker(index, target)
        for problem in missing_secrets(targets, self._environ):
            log.warning("notifications: %s", problem)
        refused = refused_secrets(targets, self._environ)
        for problem in refused:
            log.error("notifications: %s", problem)
        return refused

    def notify(self, event: Mapping[str, object]) -> str | None:
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

    def _notification(self, kind: str, event: Mapping[str, object]) -> Notification:
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
        label = target_label(index, target)
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
        label = target_label(index, target)
        for name in (target.url_env, target.username_env, target.password_env):
            if name and not env.get(name):
                problems.append(f"{label}: environment variable {name} is not set")
    return problems


def refused_secrets(
    targets: Sequence[NotificationTarget], environ: Mapping[str, str] | None = None
) -> list[str]:
    """One line per credential a target would send where the host does not bind it: such a
    target delivers nothing until the host binds it or cluster.yaml changes."""
    env = os.environ if environ is None else environ
    return [
        f"{target_label(index, target)}: refused: {refusal}"
        for index, target in enumerate(targets)
        for refusal in credential_refusals(target, env)
    ]


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
        return [
            backoff_delay(self.backoff_s, attempt, self.max_backoff_s)
            for attempt in range(1, self.retries + 1)
        ]


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
        # Unbounded underneath, bounded by offer(): finish() can always add its marker (None).
        self._queue: queue.Queue[Notification | None] = queue.Queue()
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
        self._queue.put(None)

    def abandon(self) -> None:
        """Stop retrying and drop what is left (close() ran out of time)."""
        self._abandoned.set()

    def run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
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

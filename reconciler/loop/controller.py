"""When passes run: the daemon's loop (triggers -> one reconcile pass at a time), or `reconciler
apply`'s one-shot convergence (`converge`: passes until nothing is pending).

Triggers: a file change under the desired-state directory (watchfiles, debounced), a new commit
(local HEAD moves, or a remote fetch brings one), an engine that exits (a cheap pid poll), a health
probe or a restart that falls due, an explicit trigger (the HTTP API and the git webhook call
`trigger()`), and a periodic resync that catches drift. Triggers that arrive during a pass coalesce
into one more pass; passes never overlap because only the loop thread runs them. Liveness probes
that fall due between passes are sent by the loop alone: only a probe that fails costs a pass.

A remote source is fetched by its own thread while passes read it: GitPython's Repo is not
thread-safe (both threads would talk to one `git cat-file --batch` process), so a fetch and a pass
never run at the same time (`_source_lock`); a pass therefore sees one commit throughout.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from reconciler.core.desired import Problem
from reconciler.core.events import EventKind
from reconciler.core.health import backoff_delay
from reconciler.engines.prober import wait_ready
from reconciler.loop.reconcile import PassResult, Reconciler
from reconciler.source.git_remote import RemoteSource

log = logging.getLogger("reconciler.loop.controller")


class FollowedSource(Protocol):
    """What the loop needs of a git source: a cheap "has anything moved?" check."""

    def head_sha(self) -> str | None: ...


@dataclass
class LoopSettings:
    resync_s: float = 60.0
    """full pass even without a trigger, to catch drift"""
    poll_s: float = 30.0
    """remote mode: fetch interval"""
    head_poll_s: float = 0.5
    """local mode: how often HEAD is compared (reading a ref file is cheap)"""
    liveness_poll_s: float = 1.0
    """how often the pids of running engines are checked for an exit"""
    debounce_ms: int = 150
    watch: bool = True
    failed_pass_retry_s: float = 1.0
    """a pass that raised is retried after this long, doubling while it keeps failing (up to
    resync_s): a failure that repeats must not keep a CPU busy"""
    probe_wait_s: float = 2.0
    """how long a pass (or the probes between passes) waits for the health probes it started;
    a probe still running after that is judged by a later pass, which its end asks for"""


@dataclass
class LoopStats:
    passes: int = 0
    last_pass_at: float | None = None
    last_result: PassResult | None = None
    last_reasons: list[str] = field(default_factory=list)
    last_duration_s: float | None = None
    failed_in_a_row: int = 0


class Controller:
    def __init__(
        self,
        reconciler: Reconciler,
        *,
        source: FollowedSource | None = None,
        settings: LoopSettings | None = None,
        on_pass: Callable[[PassResult | None, list[str], float], None] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.source = source
        self.settings = settings or LoopSettings()
        self.on_pass = on_pass
        self.stats = LoopStats()

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._reasons: list[str] = []
        self._threads: list[threading.Thread] = []
        self._watched_pids: dict[int, float] = {}
        self._fetch_now = threading.Event()
        self._source_lock = threading.Lock()
        self._logged_problems: tuple[Problem, ...] = ()
        self._refused: str | None = None
        """the remote commit last refused (reported once, not on every fetch)"""

    # -- triggers ----------------------------------------------------------------------------

    def trigger(self, reason: str) -> None:
        """Ask for a pass (thread-safe). Many triggers before the next pass make one pass."""
        with self._lock:
            self._reasons.append(reason)
        self._wake.set()

    def fetch_now(self, reason: str = "webhook") -> None:
        """Remote mode: fetch at once (the git webhook), then pass if anything moved."""
        self._fetch_now.set()
        if not _is_remote(self.source):
            self.trigger(reason)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._fetch_now.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stop(): the first pass at once, then on triggers and deadlines."""
        if _is_remote(self.source):
            self._sync_remote()  # the first pass reads the remote's commit, not "no clone yet"
        self._start_watchers()
        self.trigger("start")
        next_pass, next_probe = time.monotonic(), math.inf
        try:
            while not self._stop.is_set():
                self._wake.wait(max(0.0, min(next_pass, next_probe) - time.monotonic()))
                if self._stop.is_set():
                    break
                self._wake.clear()
                reasons = self._take_reasons()
                if not reasons and time.monotonic() < next_pass:
                    # only liveness probes fell due: a pass is needed when one fails, not before
                    if self._probe():
                        next_probe = self._probe_deadline()
                        continue
                    reasons = ["liveness probe failed"]
                result = self._pass(reasons or ["resync"])
                next_pass = self._next_deadline(result)
                next_probe = self._probe_deadline() if result is not None else math.inf
        finally:
            self._stop.set()
            self._fetch_now.set()
            for thread in self._threads:
                thread.join(timeout=5)

    def _pass(self, reasons: list[str]) -> PassResult | None:
        started = time.monotonic()
        try:
            with self._source_lock:
                result = self.reconciler.pass_once()
        except Exception:  # a pass must never kill the daemon; it is retried with backoff
            self.stats.failed_in_a_row += 1
            log.exception("reconcile pass failed (%d in a row)", self.stats.failed_in_a_row)
            if self.on_pass is not None:
                self.on_pass(None, reasons, time.monotonic() - started)
            return None
        duration = time.monotonic() - started
        self.stats.failed_in_a_row = 0
        self.stats.last_duration_s = duration
        self.stats.passes += 1
        self.stats.last_pass_at = time.time()
        self.stats.last_result = result
        self.stats.last_reasons = reasons
        self._watch_pids()
        self._log_problems(result)
        for line in result.executed:
            log.info("%s", line)
        log.debug("pass (%s) took %.3fs", ", ".join(reasons), duration)
        if self.on_pass is not None:
            self.on_pass(result, reasons, duration)
        return result

    def _log_problems(self, result: PassResult) -> None:
        """An invalid desired state is logged once (file:line each), and its end too."""
        errors = tuple(p for p in result.plan.problems if p.is_error)
        if errors == self._logged_problems:
            return
        self._logged_problems = errors
        if errors:
            lines = "\n  ".join(str(p) for p in errors)
            log.warning(
                "desired state invalid, nothing changed; the last valid one stays:\n  %s", lines
            )
        else:
            log.info("desired state valid again")

    def _next_deadline(self, result: PassResult | None) -> float:
        now_mono, now_wall = time.monotonic(), time.time()
        deadline = now_mono + self.settings.resync_s
        if result is None:  # retried soon, not in a minute; later while it keeps failing
            failures, settings = self.stats.failed_in_a_row, self.settings
            delay = backoff_delay(settings.failed_pass_retry_s, failures, settings.resync_s)
            return now_mono + delay
        if result.next_wake is not None:
            deadline = min(deadline, now_mono + max(0.05, result.next_wake - now_wall))
        return deadline

    def _probe_deadline(self) -> float:
        """When the next liveness probe of a running engine falls due (monotonic clock)."""
        due = self.reconciler.next_probe_at()
        if due is None:
            return math.inf
        return time.monotonic() + max(0.05, due - time.time())

    def _probe(self) -> bool:
        """The due liveness probes between passes (a pass costs far more than a few GETs);
        True when all answered."""
        try:
            return self.reconciler.probe_due()
        except Exception:
            log.exception("liveness probes failed")
            return False

    def _take_reasons(self) -> list[str]:
        with self._lock:
            reasons, self._reasons = self._reasons, []
        return sorted(set(reasons))

    # -- watcher threads ---------------------------------------------------------------------

    def _start_watchers(self) -> None:
        if _is_remote(self.source):  # the clone's files are not what is loaded: git objects are
            self._spawn(self._poll_remote, "poll-remote")
        else:
            if self.settings.watch:
                self._spawn(self._watch_files, "watch-files")
            if self.source is not None:
                self._spawn(self._poll_head, "poll-head")
        self._spawn(self._poll_liveness, "poll-liveness")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watch_files(self) -> None:
        import watchfiles

        directory = Path(self.reconciler.settings.desired_dir)
        if not directory.is_dir():
            return
        try:
            for changes in watchfiles.watch(
                directory,
                stop_event=self._stop,
                debounce=self.settings.debounce_ms,
                step=50,
                rust_timeout=1000,
                yield_on_timeout=False,
            ):
                names = sorted({Path(p).name for _, p in changes})
                self.trigger("file change: " + ", ".join(names[:5]))
        except Exception:  # the directory vanished, inotify limits...: resync still runs
            log.exception("file watcher stopped")

    def _poll_head(self) -> None:
        last = self._head()
        while not self._stop.wait(self.settings.head_poll_s):
            head = self._head()
            if head != last:
                last = head
                self.trigger(f"new commit {str(head)[:12]}")

    def _poll_remote(self) -> None:
        while not self._stop.is_set():
            self._fetch_now.wait(self.settings.poll_s)
            self._fetch_now.clear()
            if not self._stop.is_set():
                self._sync_remote()

    def _sync_remote(self) -> None:
        """Fetch and fast-forward; a pass when the commit moved. A refused rewrite of history
        changes nothing: it is logged and recorded as an event once per remote commit."""
        if not isinstance(self.source, RemoteSource):
            return
        try:
            with self._source_lock:
                result = self.source.sync()
        except Exception:
            log.exception("fetching the remote failed")
            return
        if result.refused:
            if result.new != self._refused:
                self._refused = result.new
                log.warning("%s", result.refused)
                self.reconciler.event(
                    EventKind.remote_refused, None, result.refused, revision=result.new
                )
            return
        self._refused = None
        if result.changed:
            if result.forced:
                message = f"followed a rewritten history to {str(result.new)[:12]}"
                log.warning("%s (allow_force_push)", message)
                self.reconciler.event(EventKind.remote_forced, None, message, revision=result.new)
            self.trigger(f"new commit {str(result.new)[:12]}")

    def _head(self) -> str | None:
        try:
            return self.source.head_sha() if self.source else None
        except Exception:  # a repository in the middle of a rebase, a lock file...
            return None

    def _watch_pids(self) -> None:
        """Remember the engines' pids after each pass, so that an exit wakes the loop at once."""
        watched = {}
        for handles in self.reconciler.last_handles.values():
            for h in handles:
                if h.alive and h.pid and h.create_time:
                    watched[h.pid] = h.create_time
        self._watched_pids = watched

    def _poll_liveness(self) -> None:
        while not self._stop.wait(self.settings.liveness_poll_s):
            for pid, created in list(self._watched_pids.items()):
                if not _alive(pid, created):
                    self._watched_pids.pop(pid, None)
                    self.trigger(f"engine pid {pid} exited")


def _alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.05 and proc.status() != "zombie"
    except psutil.Error:
        return False


def _is_remote(source: object) -> bool:
    """A remote source must be fetched; a local one is only watched."""
    return isinstance(source, RemoteSource)


def converge(
    reconciler: Reconciler, timeout_s: float, *, meanwhile: Callable[[], None] | None = None
) -> list[PassResult]:
    """Run passes until settled (all started engines ready, no retry pending) or the timeout.
    Between passes it waits for the next retry, or for a starting engine to answer.

    `meanwhile` is called once, after the first pass that leaves something to wait for: the
    caller's own preparation (apply imports what prints its output) overlaps the engines'
    start instead of delaying the return once they are ready."""
    deadline = reconciler.clock() + timeout_s
    results = []
    while True:
        result = reconciler.pass_once()
        results.append(result)
        now = reconciler.clock()
        if result.settled or now >= deadline:
            return results
        if meanwhile is not None:
            meanwhile()
            meanwhile, now = None, reconciler.clock()
        wake = result.next_wake if result.next_wake is not None else now + 0.5
        wake = min(max(wake, now + 0.05), deadline)
        client = reconciler.http_client()
        wait_ready(
            result.starting_urls, wake - now, interval=0.05, probe_timeout=0.5, client=client
        )

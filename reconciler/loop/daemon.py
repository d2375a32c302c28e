"""`reconciler run`: the loop, the git source and the services beside it, started and stopped
together.

The services (the HTTP API; the gateway to come) are built by the faces and handed in: the loop
knows only that they start and stop, so it imports nothing of the faces.

SIGTERM and SIGINT stop the loop cleanly and leave the engines running: the next start adopts them.
`stop_engines_on_exit` is the opt-in opposite.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from reconciler.core.cluster import ClusterSpec
from reconciler.core.estimate import MemoryFigures
from reconciler.core.events import EventKind
from reconciler.core.plan import Plan
from reconciler.core.schedule.values import GPUInfo
from reconciler.gpus import InventoryError, inventory
from reconciler.loop import bulletin
from reconciler.loop.controller import Controller, LoopSettings
from reconciler.loop.memory import figures_of
from reconciler.loop.reconcile import PassResult, Reconciler, Settings
from reconciler.metrics import DesiredSnapshot, ReconcilerMetrics, snapshot_from_plan
from reconciler.notify import Notifier
from reconciler.source.git_remote import RemoteSource
from reconciler.source.local import LocalSource
from reconciler.state.directory import BULLETIN_FILE, STATE_FILE
from reconciler.state.reading import CorruptState, read_state
from reconciler.state.statefile import State

log = logging.getLogger("reconciler.loop.daemon")


@dataclass
class DaemonOptions:
    desired_dir: Path
    state_dir: Path
    repo_url: str | None = None
    branch: str = "main"
    path: str = "desired-state"
    committed_only: bool = False
    allow_force_push: bool = False
    stop_engines_on_exit: bool = False
    loop: LoopSettings | None = None


class Service(Protocol):
    """What runs beside the loop (the HTTP API, the gateway): started before the first pass,
    stopped after the last. start() must return at once (serve in a thread of its own)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def terminate(process: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """Stop a service's process: SIGTERM, then SIGKILL if it is still there after `timeout_s`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Daemon:
    """Everything `reconciler run` holds: one Reconciler, one Controller, one source, and the
    services handed in by whoever built it."""

    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.run_id = uuid.uuid4().hex
        """Names this run in the bulletin: readers ignore one left by an earlier run."""
        self.services: list[Service] = []
        self.pass_listeners: list[Callable[[PassResult], None]] = []
        """Called on the loop thread after every pass that ran (the gateway's routing table)."""
        self.source = self._make_source()
        desired_dir = self._desired_dir()
        self.reconciler = Reconciler(Settings(desired_dir, options.state_dir, source=self.source))
        self.controller = Controller(
            self.reconciler,
            source=self.source,
            settings=options.loop or LoopSettings(),
            on_pass=self._after_pass,
        )
        self.reconciler.probe_beside(
            self.controller.settings.probe_wait_s,
            lambda: self.controller.trigger("a health probe ended"),
        )
        self.notifier = Notifier()
        self.registry = CollectorRegistry()
        self.metrics = ReconcilerMetrics(
            self.registry,
            state=self._state,
            gpus=self._gpus,
            desired=self._desired_snapshot,
            gpus_declared=self._gpus_declared,
            notifications=self.notifier.counts,
            memory=self._memory,
        )
        self.reconciler.listeners += [self.metrics.record_event, self.notifier.notify]

    def add_service(self, service: Service) -> None:
        """Serve `service` while the loop runs (call before serve_forever)."""
        self.services.append(service)

    def _make_source(self) -> LocalSource | RemoteSource:
        o = self.options
        if o.repo_url:
            return RemoteSource(
                o.repo_url,
                o.branch,
                path=o.path,
                workdir=o.state_dir / "repo",
                allow_force_push=o.allow_force_push,
            )
        return LocalSource(o.desired_dir, committed_only=o.committed_only)

    def _desired_dir(self) -> Path:
        if self.options.repo_url:
            return self.options.state_dir / "repo" / self.options.path
        return self.options.desired_dir

    # -- what metrics read at scrape time (API thread) -------------------------------------

    def _state(self) -> State | None:
        # what the loop last wrote, from memory: re-parsing the YAML on every scrape is slow and
        # recovery (moving files aside) is the loop's job, never a reader's
        if self.reconciler.last_state is not None:
            return self.reconciler.last_state
        try:
            return read_state(self.reconciler.state_dir / STATE_FILE)
        except CorruptState:
            return None

    def memory_figures(self) -> dict[str, MemoryFigures]:
        """Estimated, measured and peak MiB of each model in force, as far as they are known."""
        desired = self.reconciler.last_desired
        if desired is None:
            return {}
        state = self._state()
        records = state.models if state is not None else {}
        figures: dict[str, MemoryFigures] = {}
        for model_id, spec in desired.models.items():
            known = figures_of(
                self.reconciler.memory,
                self.reconciler.requirements,
                model_id,
                spec,
                records.get(model_id),
            )
            if known is not None:
                figures[model_id] = known
        return figures

    def _memory(self) -> dict[str, tuple[int | None, int | None]]:
        """Estimated and measured MiB of each model in force, for the metrics."""
        return {m: (f.estimated_mb, f.measured_mb) for m, f in self.memory_figures().items()}

    def _last_plan(self) -> Plan | None:
        result = self.controller.stats.last_result
        return result.plan if result is not None else None

    def _desired_snapshot(self) -> DesiredSnapshot | None:
        return snapshot_from_plan(self._last_plan())

    def _cluster(self) -> ClusterSpec | None:
        desired = self.reconciler.last_desired
        return desired.cluster if desired is not None else None

    def _gpus_declared(self) -> bool:
        cluster = self._cluster()
        return cluster is not None and cluster.gpus != "auto"

    def _gpus(self) -> list[GPUInfo]:
        cluster = self._cluster()
        if cluster is None:
            return []
        pids = [h.pid for hs in self.reconciler.last_handles.values() for h in hs if h.pid]
        try:
            return inventory(cluster, pids)
        except InventoryError:
            return []

    def _after_pass(self, result: PassResult | None, reasons: list[str], seconds: float) -> None:
        self._publish_bulletin()
        if result is None:
            self.metrics.record_pass(seconds, "error")
            return
        self.metrics.record_pass(seconds, "ok" if result.plan.valid else "invalid")
        cluster = self._cluster()
        if cluster is not None:
            for problem in self.notifier.configure(cluster.notifications):
                self.reconciler.event(EventKind.error, None, f"notifications: {problem}")
        for listener in self.pass_listeners:
            try:
                listener(result)
            except Exception:  # a listener must never break the loop
                log.exception("pass listener failed")

    def _publish_bulletin(self) -> None:
        stats = self.controller.stats
        try:
            bulletin.publish(
                self.options.state_dir / BULLETIN_FILE,
                bulletin.Bulletin(
                    run_id=self.run_id,
                    pid=os.getpid(),
                    passes=stats.passes,
                    last_pass_at=stats.last_pass_at,
                    last_reasons=tuple(stats.last_reasons),
                    plan=self._last_plan(),
                    memory=self.memory_figures(),
                    handles={m: tuple(hs) for m, hs in self.reconciler.last_handles.items()},
                    state=self.reconciler.last_state,
                ),
            )
        except OSError:  # a full disk must not stop the loop; readers show the last one
            log.exception("cannot write the bulletin")

    # -- lifecycle -------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT (main thread) or stop()."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        started: list[Service] = []
        try:
            for service in self.services:
                service.start()
                started.append(service)
            self.controller.run()
        finally:
            for service in reversed(started):
                try:
                    service.stop()
                except Exception:  # one service failing to stop must not keep the others up
                    log.exception("stopping %r failed", service)
            if self.options.stop_engines_on_exit:
                self.stop_engines()
            self.notifier.close(5)

    def stop(self) -> None:
        self.controller.stop()

    def stop_engines(self) -> None:
        handles = [h for hs in self.reconciler.observe().values() for h in hs if h.alive]
        self.reconciler.stop_engines(handles, "the daemon stopped (--stop-engines-on-exit)")

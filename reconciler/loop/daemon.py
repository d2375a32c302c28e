"""`reconciler run`: the loop, the git source and the HTTP API, started and stopped together.

SIGTERM and SIGINT stop the loop cleanly and leave the engines running: the next start adopts them.
`stop_engines_on_exit` is the opt-in opposite.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from reconciler.core.gpu import GPUInfo
from reconciler.gpus import InventoryError, inventory
from reconciler.loop.controller import Controller, LoopSettings
from reconciler.loop.reconcile import PassResult, Reconciler, Settings
from reconciler.metrics import ReconcilerMetrics, snapshot_from_plan
from reconciler.notify import Notifier
from reconciler.state.paths import STATE_FILE
from reconciler.state.statefile import CorruptState, read_state

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
    listen: str = "127.0.0.1:8080"
    api_token: str | None = None
    webhook_secret: str | None = None
    serve_api: bool = True
    stop_engines_on_exit: bool = False
    loop: LoopSettings | None = None


class Daemon:
    """Everything `reconciler run` holds: one Reconciler, one Controller, one source, the API."""

    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.source = self._make_source()
        desired_dir = self._desired_dir()
        self.reconciler = Reconciler(Settings(desired_dir, options.state_dir, source=self.source))
        self.controller = Controller(
            self.reconciler,
            source=self.source,
            settings=options.loop or LoopSettings(),
            on_pass=self._after_pass,
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
        )
        self.reconciler.listeners += [self.metrics.record_event, self.notifier.notify]
        self._server: Any = None
        self._server_thread: threading.Thread | None = None

    def _make_source(self) -> Any:
        from reconciler.source import git as source

        o = self.options
        if o.repo_url:
            return source.RemoteSource(
                o.repo_url,
                o.branch,
                path=o.path,
                workdir=o.state_dir / "repo",
                allow_force_push=o.allow_force_push,
            )
        return source.LocalSource(o.desired_dir, committed_only=o.committed_only)

    def _desired_dir(self) -> Path:
        if self.options.repo_url:
            return self.options.state_dir / "repo" / self.options.path
        return self.options.desired_dir

    # -- what metrics read at scrape time (API thread) -------------------------------------

    def _state(self) -> Any:
        # what the loop last wrote, from memory: re-parsing the YAML on every scrape is slow and
        # recovery (moving files aside) is the loop's job, never a reader's
        if self.reconciler.last_state is not None:
            return self.reconciler.last_state
        try:
            return read_state(self.reconciler.state_dir / STATE_FILE)
        except CorruptState:
            return None

    def _last_plan(self) -> Any:
        result = self.controller.stats.last_result
        return result.plan if result is not None else None

    def _desired_snapshot(self) -> Any:
        return snapshot_from_plan(self._last_plan())

    def _cluster(self) -> Any:
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
        if result is None:
            self.metrics.record_pass(seconds, "error")
            return
        self.metrics.record_pass(seconds, "ok" if result.plan.valid else "invalid")
        cluster = self._cluster()
        if cluster is not None:
            self.notifier.configure(cluster.notifications)

    # -- lifecycle -------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT (main thread) or stop()."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        if self.options.serve_api:
            self._start_api()
        try:
            self.controller.run()
        finally:
            self._stop_api()
            if self.options.stop_engines_on_exit:
                self.stop_engines()
            self.notifier.close(5)

    def stop(self) -> None:
        self.controller.stop()

    def stop_engines(self) -> None:
        handles = [h for hs in self.reconciler.observe().values() for h in hs if h.alive]
        self.reconciler.stop_engines(handles, "the daemon stopped (--stop-engines-on-exit)")

    # -- the HTTP API ----------------------------------------------------------------------

    def api_url(self) -> str:
        return f"http://{self.options.listen}"

    def _start_api(self) -> None:
        import uvicorn

        from reconciler.api import create_app

        host, _, port = self.options.listen.rpartition(":")
        config = uvicorn.Config(
            create_app(self),
            host=host.strip("[]") or "127.0.0.1",
            port=int(port),
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        # uvicorn must not take over SIGTERM/SIGINT: the daemon owns them
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._server_thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self._server_thread.start()

    def _stop_api(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._server_thread is not None:
            self._server_thread.join(timeout=5)

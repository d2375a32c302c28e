"""How the daemon owns the gateway: its process (GatewayService: start, watch, drain, stop) and
how `reconciler run` wires it in (attach: a service beside the loop, fed the routing table
after every pass, asked to drain an engine before the loop stops it, read for on-demand demand
and for whether an engine whose probe timed out is busy).

The gateway runs in a process of its own so that its traffic never competes with the reconcile
loop for the interpreter. It inherits the daemon's environment (GatewayService.env): its client
keys, remote models' keys (RECONCILER_SECRET_*, with their _HOSTS bindings) and the CA bundle for
remote endpoints (RECONCILER_REMOTE_CA_FILE) are read there, never from git. The daemon feeds it
through the routes file (routes.write_routes) and reads back in-flight counts from its
loopback-only GET /internal/inflight.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from reconciler.core.cluster import MIN_KEY_CHARS, ClusterSpec
from reconciler.core.desired import DesiredState
from reconciler.core.events import EventKind
from reconciler.core.health import Activity
from reconciler.core.instance import InstanceRecord
from reconciler.engines.base import Handle
from reconciler.gateway.demand import DemandWatch
from reconciler.gateway.peer_watch import PeerWatch, peers_of
from reconciler.gateway.routes import (
    ApiKey,
    GatewaySettings,
    Routes,
    build_routes,
    parse_routes,
    write_routes,
)
from reconciler.loop.daemon import Daemon, terminate
from reconciler.loop.reconcile import PassResult
from reconciler.state.directory import open_append, private_dir

log = logging.getLogger("reconciler.gateway")


class GatewayError(Exception):
    """The gateway process did not start or does not answer."""


class GatewayService:
    def __init__(
        self,
        listen: str,
        routes_path: str | os.PathLike[str],
        *,
        log_path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        poll_interval_s: float = 0.1,
        settings: GatewaySettings | None = None,
        require_keys: bool = False,
        unanswered_checks: int = 3,
        unanswered_for_s: float = 10.0,
        check_timeout_s: float = 2.0,
    ) -> None:
        self.listen = listen
        self.require_keys = require_keys
        self.routes_path = Path(routes_path)
        self.log_path = Path(log_path) if log_path is not None else None
        self.env = dict(os.environ if env is None else env)
        self.python = python or sys.executable
        self.poll_interval_s = poll_interval_s
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.restarts = 0
        self.settings = settings or GatewaySettings()
        self.generation = _generation_on_disk(self.routes_path)
        self.draining: set[str] = set()
        self._last: tuple[DesiredState, dict[str, InstanceRecord], tuple[str, ...]] | None = None
        self.down_hosts: frozenset[str] = frozenset()
        """the other hosts of a fleet whose gateways do not answer (left out of the table)"""
        self._last_table: Routes | None = None
        self.unanswered_checks = unanswered_checks
        self.unanswered_for_s = unanswered_for_s
        self.check_timeout_s = check_timeout_s
        """ensure_running replaces a live gateway once this many checks in a row, spanning at
        least unanswered_for_s, got no answer within check_timeout_s (a busy gateway answers
        /internal/inflight within milliseconds; one that does not for that long is hung)"""
        self._unanswered = 0
        self._silent_since = 0.0

    @property
    def base(self) -> str:
        host, _, port = self.listen.rpartition(":")
        return f"http://{host or '127.0.0.1'}:{port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL clients use."""
        return f"{self.base}/v1"

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "reconciler.gateway",
            "--listen",
            self.listen,
            "--routes",
            str(self.routes_path),
            "--poll-interval",
            str(self.poll_interval_s),
            *(["--require-keys"] if self.require_keys else []),
            *(["--log-file", str(self.log_path)] if self.log_path is not None else []),
            "--parent-pid",
            str(os.getpid()),
        ]

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the process and return once it answers; GatewayError if it does not."""
        if self.alive():
            return
        self._unanswered = 0
        if self.log_path is not None:
            private_dir(self.log_path.parent)
            self._log = os.fdopen(open_append(self.log_path), "ab")  # held for its life
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # a Ctrl-C on the daemon's terminal reaches the daemon only
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._close_log()
                raise GatewayError(f"the gateway exited with status {code} ({self.log_path})")
            try:
                self.inflight(timeout_s=0.5)
                return
            except GatewayError:
                time.sleep(0.05)
        self.stop()
        raise GatewayError(f"the gateway did not answer on {self.base} within {timeout_s:g} s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ensure_running(self) -> bool:
        """Restart a gateway that died or stopped answering (call once per pass); True when it
        was restarted. A hung one is our child and may not act on SIGTERM: SIGKILL, by pid."""
        if self.process is None:
            return False
        if self.alive():
            if not self._stopped_answering():
                return False
            log.warning(
                "the gateway (pid %d) has not answered %d checks in %.0f s: replacing it",
                self.process.pid,
                self._unanswered,
                time.monotonic() - self._silent_since,
            )
            self.process.kill()
            self.process.wait()
        self._close_log()
        self.restarts += 1
        self.start()
        return True

    def _stopped_answering(self) -> bool:
        try:
            self.inflight(timeout_s=self.check_timeout_s)
        except GatewayError:
            now = time.monotonic()
            if self._unanswered == 0:
                self._silent_since = now
            self._unanswered += 1
            enough = self._unanswered >= self.unanswered_checks
            return enough and now - self._silent_since >= self.unanswered_for_s
        self._unanswered = 0
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self.process = self.process, None
        terminate(process, timeout_s)
        self._close_log()

    def inflight(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """GET /internal/inflight: {generation, instances: {url: {model, inflight, draining,
        ...}}, models: {id: {status, inflight, queued}}}."""
        try:
            with urllib.request.urlopen(f"{self.base}/internal/inflight", timeout=timeout_s) as r:
                report = json.loads(r.read())
        except (OSError, ValueError, urllib.error.URLError) as exc:
            raise GatewayError(f"the gateway on {self.base} does not answer: {exc}") from exc
        if not isinstance(report, dict):
            raise GatewayError(f"the gateway on {self.base} answered {type(report).__name__}")
        return report

    def answered(self, timeout_s: float) -> dict[str, Any] | None:
        """As inflight, or None when the gateway does not answer."""
        try:
            return self.inflight(timeout_s=timeout_s)
        except GatewayError:
            return None

    def wait_drained(
        self, urls: Collection[str], generation: int, timeout_s: float, poll_s: float = 0.1
    ) -> bool:
        """Wait until the gateway has loaded table `generation` (in which `urls` are draining or
        gone) and no request is in flight to them; False when `timeout_s` ran out first."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                report = self.inflight()
                loaded = report["generation"] >= generation
                busy = sum(report["instances"].get(url, {}).get("inflight", 0) for url in urls)
                if loaded and busy == 0:
                    return True
            except GatewayError:
                if not self.alive():
                    return True  # nothing can be in flight through a gateway that is gone
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    # -- feeding the table ---------------------------------------------------------------

    def publish(
        self,
        desired: DesiredState | None,
        records: Mapping[str, InstanceRecord],
        unschedulable: Collection[str] = (),
        down_hosts: Collection[str] = (),
    ) -> int:
        """Write the routing table for what the last pass left (call after every pass); a table
        equal to the last one is not rewritten. Returns the generation the gateway will load.
        `down_hosts`: the other hosts of a fleet whose gateways do not answer."""
        if desired is None:
            return self.generation
        self._last = (desired, dict(records), tuple(unschedulable))
        self.down_hosts = frozenset(down_hosts)
        return self._write()

    def drain(self, urls: Collection[str], timeout_s: float | None = None) -> bool:
        """Send no new requests to `urls` and wait (at most drain_timeout_s) until their
        in-flight requests end; call before stopping their engines. True when drained."""
        self.draining |= set(urls)
        generation = self._write()
        if not self.alive():
            return True
        timeout = self.settings.drain_timeout_s if timeout_s is None else timeout_s
        return self.wait_drained(urls, generation, timeout)

    def _write(self) -> int:
        if self._last is None:
            return self.generation
        desired, records, unschedulable = self._last
        table = build_routes(
            desired,
            records,
            self.settings,
            unschedulable=unschedulable,
            draining=self.draining,
            down_hosts=self.down_hosts,
        )
        ready = {i.url for m in table.models.values() for i in m.instances if not i.peer}
        self.draining &= ready  # a stopped engine's mark goes: restarted, it takes requests again
        last = self._last_table
        if last is not None and (table.models, table.settings) == (last.models, last.settings):
            return self.generation
        self.generation += 1
        table = Routes(table.models, table.settings, self.generation)
        write_routes(self.routes_path, table)
        self._last_table = table
        return self.generation

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _generation_on_disk(path: Path) -> int:
    """Continue after the table already there, so a running gateway never sees a step back."""
    try:
        return parse_routes(path.read_text(encoding="utf-8")).generation
    except (OSError, ValueError):
        return 0


# -- the daemon's side: `reconciler run` with a gateway ----------------------------------

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def is_loopback(listen: str) -> bool:
    return listen.rpartition(":")[0] in LOOPBACK


def settings_from(
    cluster: ClusterSpec, base: GatewaySettings, host: str | None = None
) -> GatewaySettings:
    """The gateway's settings from cluster.yaml; `host`: this host's name in a fleet."""
    config = cluster.gateway
    return GatewaySettings(
        queue_timeout_s=config.queue_timeout_s,
        max_queue=config.max_queue,
        drain_timeout_s=config.drain_timeout_s,
        upstream_idle_timeout_s=config.upstream_idle_timeout_s,
        max_body_bytes=base.max_body_bytes,
        max_buffered_bytes=config.max_buffered_mb * 2**20,
        retry_after_s=base.retry_after_s,
        api_keys=tuple(ApiKey(k.name, k.key_env) for k in config.api_keys),
        host=host or "",
        fleet_key_env=config.fleet_key_env if host else None,
    )


def attach(daemon: Daemon, gateway: GatewayService) -> None:
    """Make `gateway` part of `daemon`: started and stopped with it, fed on the loop thread."""
    daemon.add_service(gateway)
    short_keys = ShortKeys()
    desired = lambda: daemon.reconciler.last_desired  # noqa: E731
    peers = PeerWatch(desired, daemon.controller.trigger)
    daemon.add_service(peers)
    daemon.pass_listeners.append(lambda result: publish(daemon, gateway, result, short_keys, peers))
    host = daemon.reconciler.settings.engine_host
    daemon.reconciler.executor.before_stop.append(lambda handles: drain(gateway, host, handles))
    daemon.reconciler.supervisor.activity = lambda: activity(gateway)
    # on-demand models: the loop reads who waits for what, and a request for a cold one
    # asks for a pass at once
    watch = DemandWatch(gateway.answered, daemon.controller.trigger, desired)
    daemon.reconciler.planning.traffic = watch.traffic
    daemon.add_service(watch)


def publish(
    daemon: Daemon,
    gateway: GatewayService,
    result: PassResult,
    short_keys: ShortKeys | None = None,
    peers: PeerWatch | None = None,
) -> None:
    desired = daemon.reconciler.last_desired
    state = daemon.reconciler.last_state
    if desired is None or state is None:
        return
    gateway.settings = settings_from(desired.cluster, gateway.settings, desired.host)
    if short_keys is not None:
        short_keys.check(daemon, gateway)
    down: Collection[str] = ()
    if peers is not None:
        for kind, message in peers.news(peers_of(desired)):
            daemon.reconciler.event(kind, None, message)
        down = peers.down()
    unschedulable = [u.model for u in result.plan.unschedulable]
    gateway.publish(desired, state.models, unschedulable, down)
    gateway.ensure_running()


def drain(gateway: GatewayService, host: str, handles: list[Handle]) -> None:
    urls = [f"http://{host}:{h.port}" for h in handles if h.port]
    if urls:
        gateway.drain(urls)


class ShortKeys:
    """Gateway keys shorter than MIN_KEY_CHARS: the gateway refuses them (and logs it); the
    daemon, which sees the same environment, says so once as an error event."""

    def __init__(self) -> None:
        self.reported: frozenset[str] = frozenset()

    def check(self, daemon: Daemon, gateway: GatewayService) -> None:
        short = {
            key.name: key.key_env
            for key in gateway.settings.api_keys
            if 0 < len(gateway.env.get(key.key_env, "")) < MIN_KEY_CHARS
        }
        for name in sorted(set(short) - self.reported):
            message = (
                f"gateway key {name} (${short[name]}) is shorter than {MIN_KEY_CHARS} "
                "characters: the gateway refuses it"
            )
            log.error(message)
            daemon.reconciler.event(EventKind.error, None, message)
        self.reported = frozenset(short)


def activity(gateway: GatewayService) -> dict[int, Activity]:
    """What the gateway sees of each engine, by port: asked when a probe timed out (a busy
    engine is not a dead one); nothing when the gateway does not answer."""
    report = gateway.answered(timeout_s=1.0)
    if report is None:
        return {}
    seen: dict[int, Activity] = {}
    for url, instance in report.get("instances", {}).items():
        if instance.get("remote"):
            continue  # a remote model's endpoint: its port is not one of this host's engines
        port = urlsplit(url).port
        if port is not None:
            age = instance.get("last_byte_age_s")
            seen[port] = Activity(int(instance.get("inflight", 0)), age)
    return seen

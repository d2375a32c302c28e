"""How `reconciler run` hands the gateway to the daemon: a service beside the loop, fed the
routing table after every pass, asked to drain an engine before the loop stops it."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from reconciler.core.events import EventKind
from reconciler.core.gateway_spec import MIN_KEY_CHARS
from reconciler.core.health import Activity
from reconciler.core.spec import ClusterSpec
from reconciler.engines.base import Handle
from reconciler.gateway.demand import DemandWatch
from reconciler.gateway.routes import ApiKey, GatewaySettings
from reconciler.gateway.service import GatewayError, GatewayService
from reconciler.loop.daemon import Daemon
from reconciler.loop.reconcile import PassResult

log = logging.getLogger("reconciler.gateway")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def is_loopback(listen: str) -> bool:
    return listen.rpartition(":")[0] in LOOPBACK


def settings_from(cluster: ClusterSpec, base: GatewaySettings) -> GatewaySettings:
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
    )


def attach(daemon: Daemon, gateway: GatewayService) -> None:
    """Make `gateway` part of `daemon`: started and stopped with it, fed on the loop thread."""
    daemon.add_service(gateway)
    short_keys = ShortKeys()
    daemon.pass_listeners.append(lambda result: publish(daemon, gateway, result, short_keys))
    host = daemon.reconciler.settings.engine_host
    daemon.reconciler.executor.before_stop.append(lambda handles: drain(gateway, host, handles))
    daemon.reconciler.supervisor.activity = lambda: activity(gateway)
    # on-demand models: the loop reads who waits for what, and a request for a cold one
    # asks for a pass at once
    watch = DemandWatch(gateway, daemon.controller.trigger, lambda: daemon.reconciler.last_desired)
    daemon.reconciler.on_demand.traffic = watch.traffic
    daemon.add_service(watch)


def publish(
    daemon: Daemon,
    gateway: GatewayService,
    result: PassResult,
    short_keys: ShortKeys | None = None,
) -> None:
    desired = daemon.reconciler.last_desired
    state = daemon.reconciler.last_state
    if desired is None or state is None:
        return
    gateway.settings = settings_from(desired.cluster, gateway.settings)
    if short_keys is not None:
        short_keys.check(daemon, gateway)
    unschedulable = [u.model for u in result.plan.unschedulable]
    gateway.publish(desired, state.models, unschedulable)
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
    try:
        report = gateway.inflight(timeout_s=1.0)
    except GatewayError:
        return {}
    seen: dict[int, Activity] = {}
    for url, instance in report.get("instances", {}).items():
        port = urlsplit(url).port
        if port is not None:
            age = instance.get("last_byte_age_s")
            seen[port] = Activity(int(instance.get("inflight", 0)), age)
    return seen

"""How `reconciler run` hands the gateway to the daemon: a service beside the loop, fed the
routing table after every pass, asked to drain an engine before the loop stops it."""

from __future__ import annotations

from reconciler.core.spec import ClusterSpec
from reconciler.engines.base import Handle
from reconciler.gateway.demand import DemandWatch
from reconciler.gateway.routes import ApiKey, GatewaySettings
from reconciler.gateway.service import GatewayService
from reconciler.loop.daemon import Daemon
from reconciler.loop.reconcile import PassResult

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def is_loopback(listen: str) -> bool:
    return listen.rpartition(":")[0] in LOOPBACK


def settings_from(cluster: ClusterSpec, base: GatewaySettings) -> GatewaySettings:
    config = cluster.gateway
    return GatewaySettings(
        queue_timeout_s=config.queue_timeout_s,
        max_queue=config.max_queue,
        drain_timeout_s=config.drain_timeout_s,
        max_body_bytes=base.max_body_bytes,
        retry_after_s=base.retry_after_s,
        api_keys=tuple(ApiKey(k.name, k.key_env) for k in config.api_keys),
    )


def attach(daemon: Daemon, gateway: GatewayService) -> None:
    """Make `gateway` part of `daemon`: started and stopped with it, fed on the loop thread."""
    daemon.add_service(gateway)
    daemon.pass_listeners.append(lambda result: publish(daemon, gateway, result))
    host = daemon.reconciler.settings.engine_host
    daemon.reconciler.executor.before_stop.append(lambda handles: drain(gateway, host, handles))
    # on-demand models: the loop reads who waits for what, and a request for a cold one
    # asks for a pass at once
    watch = DemandWatch(gateway, daemon.controller.trigger, lambda: daemon.reconciler.last_desired)
    daemon.reconciler.on_demand.traffic = watch.traffic
    daemon.add_service(watch)


def publish(daemon: Daemon, gateway: GatewayService, result: PassResult) -> None:
    desired = daemon.reconciler.last_desired
    state = daemon.reconciler.last_state
    if desired is None or state is None:
        return
    gateway.settings = settings_from(desired.cluster, gateway.settings)
    unschedulable = [u.model for u in result.plan.unschedulable]
    gateway.publish(desired, state.models, unschedulable)
    gateway.ensure_running()


def drain(gateway: GatewayService, host: str, handles: list[Handle]) -> None:
    urls = [f"http://{host}:{h.port}" for h in handles if h.port]
    if urls:
        gateway.drain(urls)

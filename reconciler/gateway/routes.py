"""The routing table: what the daemon tells the gateway process, as one JSON file.

The daemon builds it after every pass with `build_routes` (pure: desired state + the state file's
model records in, plain data out) and writes it with `write_routes` (atomic: the gateway reads the
old table or the new one, never half). The gateway polls the file's stat and reloads on change.

Gateway status of a model, which decides what a request for it gets:
  running        ready instances: forwarded (least outstanding requests)
  starting       starting, stopping for a restart, retrying after a crash, or enabled and about
                 to start: the request waits in the model's queue
  preempted, unschedulable, error (retries given up):
                 the running fallback answers, else 503 + Retry-After
  cold           activation: on_demand and not running: the request waits in the model's
                 queue, and makes the model wanted (the daemon starts it)
  disabled       404 saying so

A remote model (`framework: remote`) is "running" while its endpoint answers the daemon's probe
(its record says so), with one instance: its endpoint; "starting" until the first probe has
answered (a request waits in the queue, as for an engine that starts); else "error" (its fallback
answers, else 503 + Retry-After), or "disabled".
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from reconciler.core.desired import DesiredState
from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.serving import group
from reconciler.core.spec import ModelSpec
from reconciler.engines.registry import descriptor
from reconciler.state.directory import atomic_write

ROUTES_FILE = "routes.json"
ROUTES_VERSION = 1
ENGINE_HOST = "127.0.0.1"
"""Engines listen on the loopback of the reconciler's host."""

UNAVAILABLE = frozenset({"preempted", "unschedulable", "error"})
ELSEWHERE = "elsewhere"
"""a fleet model's local_status on a host that does not run it"""
_STATUS_RANK = {"running": 0, "starting": 1}
"""which instance's status a replicated model shows: the lowest rank, instance order on ties"""


@dataclass(frozen=True)
class ApiKey:
    name: str
    """shown in metrics and logs"""
    key_env: str
    """environment variable of the gateway process that holds the key (never the key itself)"""


@dataclass(frozen=True)
class GatewaySettings:
    queue_timeout_s: float = 300.0
    """a request for a starting model waits this long, then 503 + Retry-After"""
    max_queue: int = 256
    """waiting requests per model; one more gets 429"""
    drain_timeout_s: float = 30.0
    """how long the daemon waits for in-flight requests before it stops an engine"""
    upstream_idle_timeout_s: float = 600.0
    """a request whose engine sends no byte for this long fails (upstream.DEFAULT_IDLE_TIMEOUT_S)"""
    max_body_bytes: int = 16 * 1024 * 1024
    max_buffered_bytes: int = 256 * 1024 * 1024
    """request bodies held at once (read, queued, in flight) across all models; 503 past it"""
    retry_after_s: int = 10
    api_keys: tuple[ApiKey, ...] = ()
    host: str = ""
    """this host's name in a fleet (X-Reconciler-Host, X-Reconciler-Forwarded); "" outside one"""
    fleet_key_env: str | None = None
    """the RECONCILER_SECRET_* variable holding the key this gateway sends the other hosts'
    gateways (and accepts from them, as the key named "fleet"); None: none is sent"""


@dataclass(frozen=True)
class RouteInstance:
    url: str
    draining: bool = False
    id: str = ""
    """the instance's id (reconciler.core.serving: `<model>` for instance 0, `<model>.N`), named
    in X-Reconciler-Instance; "" = the model's id; a peer: `<model>@<host>`"""
    host: str = ""
    """the host that serves it; "" = this host"""
    peer: bool = False
    """another host's gateway (its URL): the request goes there as the client sent it"""


@dataclass(frozen=True)
class RemoteRoute:
    """Where the gateway sends a remote model's requests (`framework: remote`)."""

    endpoint: str
    """the OpenAI base URL, e.g. https://api.example.com/v1"""
    upstream_model: str
    """the `model` the endpoint knows"""
    key_env: str | None = None
    """the gateway's RECONCILER_SECRET_* variable holding the endpoint's key (never the key)"""
    max_concurrency: int | None = None
    """requests in flight to the endpoint at most; more wait in the model's queue"""


@dataclass(frozen=True)
class OverflowRoute:
    """A local model's cloud burst: past `queue_over` waiting requests, new ones go to `model`."""

    model: str
    queue_over: int


@dataclass(frozen=True)
class ServiceRoute:
    """Where a model's pods answer on Kubernetes: a headless Service, resolved by the gateway
    into one instance per ready pod (gateway.discovery)."""

    name: str
    """the Service's DNS name, e.g. qwen2-7b-pods.llm.svc.cluster.local"""
    port: int


@dataclass(frozen=True)
class RouteModel:
    id: str
    status: str
    enabled: bool = True
    aliases: tuple[str, ...] = ()
    fallback: str | None = None
    served_name: str | None = None
    """the `model` the engine expects in a request body (None = the id)"""
    instances: tuple[RouteInstance, ...] = ()
    """ready instances only (a running remote model: one, at its endpoint)"""
    remote: RemoteRoute | None = None
    overflow: OverflowRoute | None = None
    routing: str = "prefix"
    """prefix | least_outstanding: how requests spread over its instances (gateway.affinity)"""
    hosts: tuple[str, ...] = ()
    """in a fleet, the hosts that run it (its spec's `hosts`); () for a remote model and
    outside a fleet"""
    local_status: str | None = None
    """in a fleet, what this host alone offers (all a forwarded request may use): its own
    status, or "elsewhere" for a model only other hosts run; None: the same as `status`"""
    service: ServiceRoute | None = None
    """on Kubernetes: its instances are the addresses this name resolves to (no static ones)"""


@dataclass(frozen=True)
class Routes:
    models: dict[str, RouteModel] = field(default_factory=dict)
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    generation: int = 0
    """raised by the daemon on every write: /internal/inflight reports the one loaded"""

    def to_json(self) -> str:
        models = {
            m.id: {
                "status": m.status,
                "enabled": m.enabled,
                "aliases": list(m.aliases),
                "fallback": m.fallback,
                "served_name": m.served_name,
                "instances": [asdict(i) for i in m.instances],
                "remote": None if m.remote is None else asdict(m.remote),
                "overflow": None if m.overflow is None else asdict(m.overflow),
                "routing": m.routing,
                "hosts": list(m.hosts),
                "local_status": m.local_status,
                "service": None if m.service is None else asdict(m.service),
            }
            for m in sorted(self.models.values(), key=lambda m: m.id)
        }
        settings = asdict(self.settings)
        return json.dumps(
            {
                "version": ROUTES_VERSION,
                "generation": self.generation,
                "settings": settings,
                "models": models,
            },
            indent=1,
        )


def gateway_status(spec: ModelSpec, record: InstanceRecord | None, unschedulable: bool) -> str:
    """What a request for this model gets (see the module docstring).

    A disabled model can still run, as another model's fallback: it is "running" then (the
    gateway sends that model's requests to it) while requests naming it get 404 (not enabled).
    """
    status = record.status if record is not None else Status.stopped
    if status == Status.running and record is not None and record.port is not None:
        return "running"
    if not spec.enabled:
        return "disabled"
    if status == Status.preempted:
        return "preempted"
    if spec.activation == "on_demand" and status == Status.stopped and not unschedulable:
        return "cold"
    if unschedulable:
        return "unschedulable"
    if status == Status.error and (record is None or record.given_up):
        return "error"
    return "starting"


def served_name(spec: ModelSpec) -> str | None:
    """The name the engine answers to in `model` (its served model name, for engines that check
    it); None when it answers to any name. The engine's descriptor knows."""
    name_of = descriptor(spec.framework).served_name
    return name_of(spec) if name_of is not None else None


def build_routes(
    desired: DesiredState,
    records: Mapping[str, InstanceRecord],
    settings: GatewaySettings | None = None,
    *,
    unschedulable: Collection[str] = (),
    draining: Collection[str] = (),
    generation: int = 0,
    down_hosts: Collection[str] = (),
) -> Routes:
    """The table for the gateway: every desired model, its status and its ready instances.

    `records` are the state file's models; `draining` holds instance URLs that get no new
    requests (the daemon is about to stop them); `unschedulable` the plan's unschedulable ids.
    In a host's view of a fleet (core.fleet.host_view) the table holds the whole fleet: see
    `fleet_routes`; `down_hosts` are the hosts whose gateway did not answer the daemon's probe.
    """
    models: dict[str, RouteModel] = {}
    # the instances of a replicated model (reconciler.core.serving) are one route: its id
    for model_id, instance_ids in group(desired.models).items():
        spec = desired.models[instance_ids[0]]
        if spec.is_remote:
            models[model_id] = remote_route(spec, records.get(model_id))
            continue
        statuses, instances = [], []
        for instance in instance_ids:
            record = records.get(instance)
            status = gateway_status(desired.models[instance], record, instance in unschedulable)
            statuses.append(status)
            if status == "running" and record is not None:
                url = f"http://{ENGINE_HOST}:{record.port}"
                instances.append(RouteInstance(url, draining=url in draining, id=instance))
        models[model_id] = RouteModel(
            id=model_id,
            # one ready instance serves; else one starting makes requests wait; else the
            # first instance's status says why none can
            status=min(statuses, key=lambda s: _STATUS_RANK.get(s, len(_STATUS_RANK))),
            enabled=spec.enabled,
            aliases=tuple(spec.aliases),
            fallback=spec.fallback,
            served_name=served_name(spec),
            instances=tuple(instances),
            overflow=None
            if spec.overflow is None
            else OverflowRoute(spec.overflow.model, spec.overflow.queue_over),
            routing=spec.routing,
        )
    if desired.host is not None and desired.hosts:
        models = fleet_routes(desired, models, frozenset(down_hosts))
    return Routes(models, settings or GatewaySettings(), generation)


def fleet_routes(
    desired: DesiredState, local: Mapping[str, RouteModel], down: frozenset[str]
) -> dict[str, RouteModel]:
    """Every model of the fleet, as this host's gateway serves it: a model this host runs has
    its own instances first, then the other hosts that run it, each as one instance (its
    gateway); a model only other hosts run has those alone. A host in `down` is left out; a
    model with no instance at all keeps this host's status ("error" when only others run it:
    its fallback answers, else 503 + Retry-After). `local_status` keeps what this host alone
    offers, for the requests another host forwarded (never forwarded again)."""
    here = desired.host or ""
    models = dict(local)
    for model_id, route in local.items():
        spec = desired.models[model_id]  # instance 0's id is the model's
        if spec.is_remote:
            continue
        peers = peer_instances(desired, model_id, spec, here, down)
        models[model_id] = replace(
            route,
            status="running" if peers and not route.instances else route.status,
            instances=route.instances + peers,
            hosts=tuple(spec.hosts or ()),
            local_status=route.status,
        )
    for model_id, ids in group(desired.elsewhere).items():
        spec = desired.elsewhere[ids[0]]
        peers = peer_instances(desired, model_id, spec, here, down)
        # a disabled one may still serve there, as another model's fallback
        status = "running" if peers else "error" if spec.enabled else "disabled"
        models[model_id] = RouteModel(
            id=model_id,
            status=status,
            enabled=spec.enabled,
            aliases=tuple(spec.aliases),
            fallback=spec.fallback,
            instances=peers,
            routing=spec.routing,
            hosts=tuple(spec.hosts or ()),
            local_status=ELSEWHERE,
        )
    return models


def peer_instances(
    desired: DesiredState, model_id: str, spec: ModelSpec, here: str, down: frozenset[str]
) -> tuple[RouteInstance, ...]:
    """The other hosts that run the model and whose gateways answer, in the spec's order."""
    return tuple(
        RouteInstance(
            desired.hosts[host].gateway.rstrip("/"),
            id=f"{model_id}@{host}",
            host=host,
            peer=True,
        )
        for host in spec.hosts or ()
        if host != here and host in desired.hosts and host not in down
    )


def remote_route(spec: ModelSpec, record: InstanceRecord | None) -> RouteModel:
    """A remote model's route: its endpoint is its one instance while the probe says running."""
    endpoint = spec.endpoint or ""  # validation requires one: without, it never runs
    status = record.status if record is not None else Status.starting
    running = bool(endpoint) and status == Status.running
    return RouteModel(
        id=spec.id,
        status=_remote_status(spec, status, running),
        enabled=spec.enabled,
        aliases=tuple(spec.aliases),
        fallback=spec.fallback,
        instances=(RouteInstance(endpoint, id=spec.id),) if running else (),
        remote=RemoteRoute(endpoint, spec.served_upstream, spec.api_key_env, spec.max_concurrency),
    )


def _remote_status(spec: ModelSpec, status: Status, running: bool) -> str:
    if running:  # a disabled model may still serve as another one's fallback
        return "running"
    if not spec.enabled:
        return "disabled"
    # no record yet: the daemon has not probed it since it appeared
    return "starting" if status == Status.starting else "error"


def write_routes(path: str | os.PathLike[str], routes: Routes) -> None:
    atomic_write(path, routes.to_json() + "\n")


class RoutesError(ValueError):
    """The routes file is not a table this gateway understands."""


def parse_routes(text: str) -> Routes:
    """The inverse of Routes.to_json; a malformed file raises RoutesError (the old table stays)."""
    try:
        data = json.loads(text)
        if data.get("version") != ROUTES_VERSION:
            raise RoutesError(f"unsupported routes version {data.get('version')!r}")
        raw_settings: dict[str, Any] = dict(data.get("settings") or {})
        keys = tuple(ApiKey(**k) for k in raw_settings.pop("api_keys", ()))
        settings = GatewaySettings(**raw_settings, api_keys=keys)
        models = {}
        for model_id, m in (data.get("models") or {}).items():
            models[model_id] = RouteModel(
                id=model_id,
                status=str(m["status"]),
                enabled=bool(m.get("enabled", True)),
                aliases=tuple(m.get("aliases") or ()),
                fallback=m.get("fallback"),
                served_name=m.get("served_name"),
                instances=tuple(RouteInstance(**i) for i in m.get("instances") or ()),
                remote=_parsed(RemoteRoute, m.get("remote")),
                overflow=_parsed(OverflowRoute, m.get("overflow")),
                routing=str(m.get("routing", "prefix")),
                hosts=tuple(str(h) for h in m.get("hosts") or ()),
                local_status=m.get("local_status"),
                service=_parsed(ServiceRoute, m.get("service")),
            )
        return Routes(models, settings, int(data.get("generation", 0)))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RoutesError(f"bad routes file: {exc}") from exc


Part = TypeVar("Part", RemoteRoute, OverflowRoute, ServiceRoute)


def _parsed(kind: type[Part], value: object) -> Part | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RoutesError(f"{kind.__name__}: expected an object, got {type(value).__name__}")
    return kind(**value)

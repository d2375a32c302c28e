"""The routing table of the gateway on Kubernetes, which `reconciler render kubernetes` writes
into a ConfigMap: no daemon there keeps a table up to date, so the file says where each model's
pods answer and the gateway finds them itself (gateway.discovery).

Each engine model's route names its headless Service instead of instances, with status
"starting" until the gateway's first resolution; aliases, fallback, overflow and routing are the
spec's, as on one host. A remote model is routed to its endpoint from the start: nothing probes
it on Kubernetes, so a failing endpoint is found by the requests themselves (failover before the
first byte, as for any instance). The settings are cluster.yaml's `gateway:` section.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from reconciler.core.desired import DesiredState
from reconciler.gateway.routes import (
    GatewaySettings,
    OverflowRoute,
    RouteInstance,
    RouteModel,
    Routes,
    ServiceRoute,
    remote_route,
    served_name,
)
from reconciler.gateway.service import settings_from

RENDERED_GENERATION = 1
"""0 means "no table yet" to the gateway (503 for every request); a rendered table is one"""
UNRESOLVED = "starting"
"""an engine model's status until the gateway has resolved its Service: requests wait briefly"""


def cluster_routes(desired: DesiredState, services: Mapping[str, tuple[str, int]]) -> Routes:
    """The table for `desired`; `services`: each engine model's id -> (DNS name, port) of the
    Service whose addresses are its ready pods."""
    models: dict[str, RouteModel] = {}
    for model_id in sorted(desired.models):
        spec = desired.models[model_id]
        if spec.is_remote:
            route = remote_route(spec, None)
            endpoint = route.remote.endpoint if route.remote is not None else ""
            models[model_id] = replace(
                route,
                status="running" if endpoint else "error",
                instances=(RouteInstance(endpoint, id=model_id),) if endpoint else (),
            )
            continue
        name, port = services[model_id]
        models[model_id] = RouteModel(
            id=model_id,
            status=UNRESOLVED,
            enabled=spec.enabled,
            aliases=tuple(spec.aliases),
            fallback=spec.fallback,
            served_name=served_name(spec),
            overflow=None
            if spec.overflow is None
            else OverflowRoute(spec.overflow.model, spec.overflow.queue_over),
            routing=spec.routing,
            service=ServiceRoute(name, port),
        )
    settings = settings_from(desired.cluster, GatewaySettings())
    return Routes(models, settings, RENDERED_GENERATION)


def routes_file(desired: DesiredState, services: Mapping[str, tuple[str, int]]) -> str:
    """The text of routes.json for `desired` (what the ConfigMap holds)."""
    return cluster_routes(desired, services).to_json() + "\n"

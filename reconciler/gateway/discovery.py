"""A gateway whose models are Kubernetes Services: each model's headless Service, resolved into
one instance per ready pod.

On Kubernetes no daemon writes the routing table: `reconciler render kubernetes` writes it once,
into a ConfigMap, and names for each engine model a headless Service (`<model>-pods`) instead of
instances. Kubernetes publishes only ready pods' addresses there (publishNotReadyAddresses is
false), so resolving the name every RESOLVE_EVERY_S seconds is the readiness the gateway needs:
each address is an instance `http://<ip>:<port>`; a name with no address makes the model "error"
(its fallback answers, else 503 + Retry-After). Until the first resolution a model keeps the
status the file gives it ("starting": a request waits in the queue for a moment).

Resolution runs off the event loop (the loop's getaddrinfo uses a thread), all names at once,
each bounded by RESOLVE_TIMEOUT_S: a slow resolver delays only its own name, never a request. A
name the resolver says does not exist has no address; a resolver that fails otherwise (timeout,
temporary failure) keeps that name's last addresses, so a DNS hiccup does not empty a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from reconciler.gateway.routes import RouteInstance, Routes, RoutesError, parse_routes
from reconciler.gateway.server import Gateway

log = logging.getLogger("reconciler.gateway")

RESOLVE_EVERY_S = 5.0
RESOLVE_TIMEOUT_S = 4.0
Addresses = Mapping[str, tuple[str, ...]]
"""a Service's DNS name -> the addresses it resolved to (sorted)"""
NO_NAME = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)
"""resolver answers that mean "no such name (or no address)": no ready pod"""


def uses_services(path: Path) -> bool:
    """Whether the routes file at `path` names a Service for any model (a rendered one)."""
    try:
        routes = parse_routes(path.read_text(encoding="utf-8"))
    except (OSError, RoutesError):
        return False
    return any(m.service is not None for m in routes.models.values())


def service_names(routes: Routes) -> dict[str, int]:
    """Each Service name the table names -> its port."""
    return {m.service.name: m.service.port for m in routes.models.values() if m.service}


def instance_url(address: str, port: int) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"http://{host}:{port}"


def with_addresses(routes: Routes, addresses: Addresses) -> Routes:
    """The table with each Service's addresses as its model's instances. A model whose Service
    has not been resolved yet keeps the file's status; one without an address is "error" (or
    "disabled", its Deployment scaled to 0 by `enabled: false`)."""
    models = {}
    for model_id, route in routes.models.items():
        service = route.service
        if service is None or service.name not in addresses:
            models[model_id] = route
            continue
        found = addresses[service.name]
        instances = tuple(
            RouteInstance(instance_url(a, service.port), id=f"{model_id}/{a}") for a in found
        )
        status = "running" if instances else "error" if route.enabled else "disabled"
        models[model_id] = replace(route, status=status, instances=instances)
    return replace(routes, models=models)


async def resolve(name: str, port: int, previous: tuple[str, ...] | None) -> tuple[str, ...]:
    """The addresses of `name` (sorted, deduplicated); () when it has none; `previous` (or ()
    the first time) when the resolver fails otherwise."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(name, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
        )
    except socket.gaierror as exc:
        if exc.errno in NO_NAME:
            return ()
        log.warning("resolving %s: %s; keeping its last addresses", name, exc)
        return previous or ()
    except (TimeoutError, OSError) as exc:
        log.warning("resolving %s: %s; keeping its last addresses", name, exc or "timed out")
        return previous or ()
    found = {str(info[4][0]) for info in infos}
    # a dual-stack pod has an address of each family: one instance per pod, IPv4 if any
    ipv4 = {a for a in found if ipaddress.ip_address(a).version == 4}
    return tuple(sorted(ipv4 or found))


class ServiceGateway(Gateway):
    """The gateway of a rendered routes file: the file's table, with each model's Service
    resolved into its instances (see the module docstring)."""

    def __init__(self, routes_path: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(routes_path, *args, **kwargs)
        self.declared = Routes()
        """the table as the file says it, before resolution"""
        self.addresses: dict[str, tuple[str, ...]] = {}
        self.resolve_every_s = RESOLVE_EVERY_S
        self._wake = asyncio.Event()

    def load(self, routes: Routes) -> None:
        if service_names(routes).keys() - self.addresses.keys():
            self._wake.set()  # a new name: resolve it now, not in up to 5 s
        self.declared = routes
        super().load(with_addresses(routes, self.addresses))

    async def resolve_once(self) -> bool:
        """Resolve every name once; reload the table when an address changed."""
        names = service_names(self.declared)
        found = await asyncio.gather(
            *(resolve(n, p, self.addresses.get(n)) for n, p in names.items())
        )
        addresses = dict(zip(names, found, strict=True))
        changed = addresses != self.addresses
        for name, new in addresses.items():
            if new != self.addresses.get(name):
                log.info("service %s: %s", name, ", ".join(new) or "no ready pod")
        self.addresses = addresses
        if changed:
            super().load(with_addresses(self.declared, addresses))
        return changed

    async def watch_services(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.resolve_once()
            except Exception:  # a fault here must not end discovery for good
                log.exception("service discovery")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.resolve_every_s)

    def app(self) -> web.Application:
        app = super().app()
        app.on_startup.append(self._start_discovery)
        app.on_cleanup.append(self._stop_discovery)
        return app

    async def _start_discovery(self, app: web.Application) -> None:
        self._discovery = asyncio.ensure_future(self.watch_services())

    async def _stop_discovery(self, app: web.Application) -> None:
        self._discovery.cancel()

"""The gateway's HTTP server: aiohttp's server, its routes, keys and queues; requests go to the
engines through relay.py (the lean client of upstream.py), all on one event loop.

Measured on this project's 2-core host (tests/bench/gateway.py, CPU time of the gateway process
per request under wrk): aiohttp server + aiohttp client ~260 us per non-streaming request,
aiohttp server + upstream.Pool ~160 us; uvicorn+starlette+httpx is heavier than both.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web

from reconciler.core.cluster import MIN_KEY_CHARS
from reconciler.gateway import errors
from reconciler.gateway.clients import Bodies, Claim, Connections, Guard, client_middleware
from reconciler.gateway.errors import FORWARDED_HEADER, HOST_HEADER, MODEL_HEADER, Refusal
from reconciler.gateway.metrics import CONTENT_TYPE, UNKNOWN_MODEL, GatewayMetrics, TrafficWindow
from reconciler.gateway.relay import Relay, tls_context
from reconciler.gateway.routes import (
    ELSEWHERE,
    UNAVAILABLE,
    GatewaySettings,
    Routes,
    RoutesError,
)
from reconciler.gateway.routes import parse_routes as parse_routes_text
from reconciler.gateway.table import Entry, Table
from reconciler.gateway.upstream import Pool

log = logging.getLogger("reconciler.gateway")
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
FLEET_KEY_NAME = "fleet"
"""the name under which a gateway with keys accepts the fleet key (other hosts' gateways)"""


class Gateway:
    def __init__(
        self,
        routes_path: Path,
        *,
        poll_s: float = 0.1,
        environ: Mapping[str, str] | None = None,
        require_keys: bool = False,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.routes_path = routes_path
        self.require_keys = require_keys
        """listening beyond loopback: without configured keys every request is refused"""
        self.poll_s = poll_s
        self.environ = os.environ if environ is None else environ
        self.table = Table()
        self.metrics = GatewayMetrics()
        self.traffic = TrafficWindow()
        self.keys: list[tuple[str, bytes]] = []
        self.keyed = False
        """requests must show a key: gateway.api_keys are set, or the gateway listens beyond
        loopback and the fleet key is its one key (other hosts' gateways only)"""
        self.pool = Pool(tls=lambda: tls_context(self.environ))
        self.relay = Relay(self.table, self.metrics, self.pool, lambda: self.settings, self.environ)
        self.guard = Guard(listen_host)
        self.connections = Connections(limit=2**31)
        """the listening socket's (__main__.serve sets the limit): requests mark theirs busy"""
        self.bodies = Bodies()
        self._stat: tuple[int, int, int] | None = None

    @property
    def settings(self) -> GatewaySettings:
        return self.table.routes.settings

    # -- the routing table ---------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        try:
            st = self.routes_path.stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stat:
            return False
        self._stat = stamp
        try:
            routes = parse_routes_text(self.routes_path.read_text(encoding="utf-8"))
        except (OSError, RoutesError) as exc:
            log.warning("keeping the previous routing table: %s", exc)
            return False
        self.load(routes)
        return True

    def load(self, routes: Routes) -> None:
        for model, seconds in self.table.load(routes):
            self.metrics.cold_started(model, seconds)
        keys = []
        settings = routes.settings
        named = [(key.name, key.key_env) for key in settings.api_keys]
        self.keyed = bool(named) or (self.require_keys and settings.fleet_key_env is not None)
        if self.keyed and settings.fleet_key_env is not None:
            named.append((FLEET_KEY_NAME, settings.fleet_key_env))
        for name, key_env in named:
            value = self.environ.get(key_env, "")
            if len(value) >= MIN_KEY_CHARS:
                keys.append((name, value.encode()))
            elif value:
                log.error(
                    "API key %s: $%s is shorter than %d characters; that key is refused",
                    name,
                    key_env,
                    MIN_KEY_CHARS,
                )
            else:
                log.warning("API key %s: $%s is not set; that key is refused", name, key_env)
        self.keys = keys

    async def watch_routes(self) -> None:
        while True:
            self.reload_if_changed()
            await asyncio.sleep(self.poll_s)

    # -- requests --------------------------------------------------------------------------

    def authorize(self, request: web.Request) -> None:
        if not self.keyed:
            if self.require_keys:
                raise errors.keys_required()
            return
        header = request.headers.get("Authorization", "")
        # undecodable bytes come back as they were sent (surrogateescape): they match no key
        given = header[7:].strip().encode("utf-8", "surrogateescape")
        if header[:7].lower() != "bearer ":
            given = b""
        name = None
        for key_name, key in self.keys:  # every key compared: timing does not tell which
            if hmac.compare_digest(given, key) and name is None:
                name = key_name
        if name is None:
            raise errors.unauthorized()
        self.metrics.key_used(name)

    async def handle_post(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        label, shown = UNKNOWN_MODEL, ""
        claim = Claim()
        try:
            self.authorize(request)
            body, payload = await self.bodies.read_json(request, self.settings, claim)
            shown = payload["model"]
            entry = self.table.resolve(shown)
            if entry is None:
                self.check_table_loaded()
                raise errors.unknown_model(shown)
            label = shown = entry.id
            if not entry.route.enabled:  # asked by name; it may still run as a fallback
                raise errors.disabled(entry.id)
            self.table.touch(entry.id)
            # another host's gateway sent it: this host serves it, or nobody does
            here_only = FORWARDED_HEADER in request.headers
            target = await self.wait_for_target(entry, here_only)
            label = shown = target.id
            response = await self.relay.forward(
                request, entry, target, body, payload, started, here_only
            )
            code = response.status
        except Refusal as refusal:
            response, code = refusal.response(shown), refusal.status
        finally:
            self.bodies.release(claim)
        seconds = time.perf_counter() - started
        self.metrics.request_done(label, code, seconds)
        self.traffic.record(label, code, seconds)
        return response

    def check_table_loaded(self) -> None:
        """Before the daemon's first routing table the gateway does not know which models
        exist: 503 with Retry-After, never a 404 or an empty list that a client would trust."""
        if self.table.routes.generation == 0:
            raise errors.no_table(self.settings.retry_after_s)

    async def wait_for_target(self, entry: Entry, here_only: bool = False) -> Entry:
        """The model itself when ready, its running fallback when it cannot run (a remote fallback
        also while it starts or when its queue is full), its overflow model when too many wait
        for it, or wait: for it to become ready, or (a remote model at its max_concurrency) for
        one of its requests to end. `here_only` (a forwarded request): as this host alone can
        serve it, never through another host."""
        settings = self.settings
        deadline = 0.0  # set when it joins the queue, before it waits
        queued = False
        try:
            while True:
                entry = self.table.entries.get(entry.id, entry)
                if not entry.route.enabled:
                    raise errors.disabled(entry.id)
                if not queued and (spill := self.overflow_of(entry, here_only)) is not None:
                    self.metrics.overflowed(entry.id, spill.id)
                    return spill
                target = None
                status = entry.local_status() if here_only else entry.status
                if entry.ready_here() if here_only else entry.ready():
                    target = entry
                elif (
                    status in UNAVAILABLE
                    or status == ELSEWHERE
                    or entry.id not in self.table.entries
                ):
                    target = self.table.fallback_of(entry)
                    if target is not None and here_only and not target.ready_here():
                        target = None
                    if target is None and status == ELSEWHERE:
                        raise errors.not_here(entry.id, settings.retry_after_s)
                    if target is None:
                        raise errors.unavailable(entry.id, status, settings.retry_after_s)
                elif status == "starting" and not queued:
                    # a hosted fallback answers now rather than let the client wait for the start
                    target = self.remote_fallback_of(entry)
                if target is not None and not target.full():
                    return target
                now = time.monotonic()
                if not queued:
                    if entry.waiting >= settings.max_queue:
                        hosted = self.remote_fallback_of(entry)
                        if hosted is not None and not hosted.full():
                            return hosted  # queued past its limit: the cloud takes the rest
                        raise errors.queue_full(
                            entry.id, settings.max_queue, settings.retry_after_s
                        )
                    queued, deadline = True, now + settings.queue_timeout_s
                    entry.waiting += 1
                    if entry.waiting_since is None and target is None:
                        entry.waiting_since = now  # a cold start, as clients feel it
                    self.metrics.queue_add(entry.id, 1)
                # not ready: wait for a new table; at its limit: for a slot (or a new table)
                table = self.table
                changed = table.changed if target is None else table.room_event(target.id)
                try:
                    await asyncio.wait_for(changed.wait(), max(0.0, deadline - now))
                except TimeoutError:
                    busy = None if target is None else target.id
                    raise errors.queue_timeout(
                        entry.id, settings.queue_timeout_s, settings.retry_after_s, busy
                    ) from None
        finally:
            if queued:
                current = self.table.entries.get(entry.id, entry)
                current.waiting -= 1
                if current.waiting == 0:
                    current.waiting_since = None
                self.metrics.queue_add(entry.id, -1)

    def remote_fallback_of(self, entry: Entry) -> Entry | None:
        """The model's fallback when it is a remote model ready now: it may stand in for a model
        that is starting or whose queue is full (a local fallback only for one that cannot run:
        starting one would take the GPU the model is starting on)."""
        fallback = self.table.fallback_of(entry)
        return fallback if fallback is not None and fallback.route.remote is not None else None

    def overflow_of(self, entry: Entry, here_only: bool = False) -> Entry | None:
        """The model a new request for `entry` goes to instead, when more than queue_over
        requests already wait for `entry` and that model can take it now."""
        overflow = entry.route.overflow
        if overflow is None or entry.waiting_for_answer() <= overflow.queue_over:
            return None
        spill = self.table.entries.get(overflow.model)
        if spill is None or spill.id == entry.id or spill.full():
            return None
        return spill if (spill.ready_here() if here_only else spill.ready()) else None

    async def handle_models(self, request: web.Request) -> web.Response:
        try:
            self.authorize(request)
            self.check_table_loaded()
        except Refusal as refusal:
            return refusal.response("")
        data = []
        for entry in self.table.entries.values():
            if not entry.route.enabled:
                continue
            for name in (entry.id, *entry.route.aliases):
                data.append(
                    {
                        "id": name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "reconciler",
                        "root": entry.id,
                        "status": entry.status,
                        "hosts": list(entry.route.hosts),
                    }
                )
        return web.json_response({"object": "list", "data": data}, headers={MODEL_HEADER: ""})

    async def handle_health(self, request: web.Request) -> web.Response:
        """Whether this gateway can serve: other hosts' daemons probe it (no key: it says
        nothing but this host's name); 503 before the daemon's first routing table."""
        loaded = self.table.routes.generation != 0
        body = {"status": "ok" if loaded else "no routing table yet", "host": self.settings.host}
        return web.json_response(body, status=200 if loaded else 503, headers={MODEL_HEADER: ""})

    async def stamp_host(self, request: web.Request, response: web.StreamResponse) -> None:
        """X-Reconciler-Host on every response in a fleet: this host, unless another host's
        gateway answered (the relay passed its name on)."""
        host = self.settings.host
        if host and HOST_HEADER not in response.headers:
            response.headers[HOST_HEADER] = host

    async def handle_inflight(self, request: web.Request) -> web.Response:
        if not from_this_host(request):
            return errors.forbidden().response("")
        return web.json_response(self.table.inflight_report(), headers={MODEL_HEADER: ""})

    async def handle_traffic(self, request: web.Request) -> web.Response:
        """Each model's requests/s and latency percentiles over the last minute (for the
        dashboard, through the API)."""
        if not from_this_host(request):
            return errors.forbidden().response("")
        return web.json_response(self.traffic.report(), headers={MODEL_HEADER: ""})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        if not from_this_host(request):  # key names and model ids are not for everyone
            try:
                self.authorize(request)
            except Refusal as refusal:
                return refusal.response("")
        response = web.Response(body=self.metrics.exposition(), headers={MODEL_HEADER: ""})
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def handle_unknown(self, request: web.Request) -> web.Response:
        return errors.not_found(request.method, request.path).response("")

    # -- the application -------------------------------------------------------------------

    def app(self) -> web.Application:
        # read_json applies the table's limit
        checks = client_middleware(self.guard, lambda: self.keyed, self.connections)
        app = web.Application(client_max_size=2**62, middlewares=[checks])
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_post("/v1/{tail:.+}", self.handle_post)
        app.router.add_get("/healthz", self.handle_health)
        app.router.add_get("/internal/inflight", self.handle_inflight)
        app.router.add_get("/internal/traffic", self.handle_traffic)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_route("*", "/{tail:.*}", self.handle_unknown)
        app.on_response_prepare.append(self.stamp_host)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app: web.Application) -> None:
        self.reload_if_changed()
        self._watcher = asyncio.ensure_future(self.watch_routes())

    async def _cleanup(self, app: web.Application) -> None:
        self._watcher.cancel()
        self.pool.close()


def from_this_host(request: web.Request) -> bool:
    """Loopback, or the address the gateway listens on itself: a daemon reaching a gateway bound
    to one of the host's addresses connects from that address."""
    if request.remote in LOOPBACK:
        return True
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return False
    return bool(request.remote == sockname[0])

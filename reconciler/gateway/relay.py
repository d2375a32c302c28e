"""Relaying one request: pick an instance, fail over before the first byte (to another instance,
then to the fallback), then pass back the answer or its stream chunk by chunk.

The instances come from the gateway's Table; the connections from the lean client of
upstream.py, which frames each answer strictly (framing.py). A remote model's one instance is
its endpoint, an OpenAI-compatible API someone else serves; a 502 or 503 it answers fails over
like an engine's when a fallback can answer instead, and is passed through as it came when none
can (a provider's own error says more than ours). What changes for an endpoint:
- the connection is TLS-verified when the endpoint is https (the system's CAs, SSL_CERT_FILE, and
  the host's own bundle in RECONCILER_REMOTE_CA_FILE);
- the path is the endpoint's path followed by the client's path after `/v1` (OpenAI base URLs
  end in the version: `https://api.example.com/v1` + `/chat/completions`);
- the body's `model` is the endpoint's name for it (`upstream_model`);
- the key is the gateway's own (`Authorization: Bearer`, read from its environment), and only
  to a host the operator binds it to (reconciler.core.secrets): never the client's header.
Another host's gateway (a fleet: the model runs there) is relayed to the same way, but gets the
client's path and `model` as they came (its own table knows the model's names), the fleet key
(`gateway.fleet_key_env`, bound by its _HOSTS like any secret), and X-Reconciler-Forwarded, so
that it serves the request itself and never forwards it again.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from reconciler.core.secrets import remote_key_refusal
from reconciler.core.spec import REMOTE_FRAMEWORK, ModelSpec
from reconciler.gateway import errors
from reconciler.gateway.affinity import prefix_key
from reconciler.gateway.clients import FORWARDED_HEADERS
from reconciler.gateway.errors import INSTANCE_HEADER, MODEL_HEADER
from reconciler.gateway.framing import UpstreamError
from reconciler.gateway.metrics import Failover, GatewayMetrics
from reconciler.gateway.peers import FleetKey, passed_back, peer_model
from reconciler.gateway.routes import GatewaySettings, RemoteRoute
from reconciler.gateway.table import DOWN_FOR_S, PEER_DOWN_FOR_S, Entry, Instance, Table
from reconciler.gateway.upstream import Pool

log = logging.getLogger("reconciler.gateway")

CA_FILE_ENV = "RECONCILER_REMOTE_CA_FILE"
"""a PEM bundle of CAs the gateway trusts for remote endpoints, beside the system's"""
USER_AGENT = "reconciler-gateway"
"""some providers' front doors refuse requests without a User-Agent"""
CLIENT_PREFIX = "/v1"
"""what every relayed client path starts with (the gateway's route)"""


def tls_context(environ: Mapping[str, str]) -> ssl.SSLContext:
    """Certificates and host names verified: the system's CAs (and SSL_CERT_FILE, which
    create_default_context honours), plus the bundle in RECONCILER_REMOTE_CA_FILE when set. A
    bundle that cannot be read is logged and left out: an endpoint it would have vouched for then
    fails its TLS check, which is the safe way round."""
    context = ssl.create_default_context()
    ca_file = environ.get(CA_FILE_ENV)
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            log.error("$%s (%s) is not a readable CA bundle: %s", CA_FILE_ENV, ca_file, exc)
    return context


def endpoint_path(endpoint: str, client_path: str) -> str:
    """The path (and query) the endpoint gets for a client's `/v1/...` request target."""
    base = urlsplit(endpoint).path.rstrip("/")
    rest = client_path.removeprefix(CLIENT_PREFIX)
    return base + rest


def with_model(body: bytes, payload: Mapping[str, Any], name: str) -> bytes:
    """The request body with `model` set to `name`; the body as it came when it already is."""
    if payload.get("model") == name:
        return body
    return json.dumps({**payload, "model": name}).encode()


@dataclass(frozen=True)
class KeyCheck:
    """A remote model's key as this gateway may send it: the header value, or why not."""

    authorization: str | None
    refusal: str | None


def key_check(model_id: str, remote: RemoteRoute, environ: Mapping[str, str]) -> KeyCheck:
    """Whether the gateway may send the key to the endpoint (core.secrets decides), and the
    header it sends. A remote model without `api_key_env` is sent no key."""
    if remote.key_env is None:
        return KeyCheck(None, None)
    # the route carries what the rule reads of a spec; nothing else of a spec plays a part
    spec = ModelSpec.model_construct(
        id=model_id,
        framework=REMOTE_FRAMEWORK,
        endpoint=remote.endpoint,
        upstream_model=remote.upstream_model,
        api_key_env=remote.key_env,
    )
    refusal = remote_key_refusal(spec, environ)
    if refusal is not None:
        return KeyCheck(None, refusal)
    value = environ.get(remote.key_env, "")
    if not value:  # the rule refuses an unset key too: kept, in case it ever does not
        return KeyCheck(None, f"{remote.key_env} is not set in the gateway's environment")
    return KeyCheck(f"Bearer {value}", None)


def endpoint_headers(
    remote: RemoteRoute, client_headers: Mapping[str, str], authorization: str | None
) -> dict[str, str]:
    """The headers of the request to the endpoint: the client's forwarded ones (never its
    Authorization: that is the gateway's key, if any), the gateway's key, a User-Agent."""
    headers = {k: v for k, v in client_headers.items() if k.lower() != "authorization"}
    headers["User-Agent"] = USER_AGENT
    if authorization is not None:
        headers["Authorization"] = authorization
    return headers


log = logging.getLogger("reconciler.gateway")
RETRY_STATUSES = {502: Failover.http_502, 503: Failover.http_503}
"""engine answers that mean "try another instance", and the failover reason each counts as"""
USAGE_FIELD = re.compile(rb'"(prompt|completion)_tokens"\s*:\s*(\d+)')


@dataclass(frozen=True)
class Miss:
    """An instance that did not answer usably: fail over. `reason` is the failover metric's
    label; the whole is what a client is told when every instance misses."""

    reason: Failover
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class Relay:
    def __init__(
        self,
        table: Table,
        metrics: GatewayMetrics,
        pool: Pool,
        settings: Callable[[], GatewaySettings],
        environ: Mapping[str, str],
    ) -> None:
        self.table, self.metrics, self.pool = table, metrics, pool
        self.settings = settings
        """the settings of the routing table loaded now (they change with it)"""
        self.environ = environ
        """the gateway's environment: where remote models' keys are read"""
        self._keys: dict[tuple[str, RemoteRoute], KeyCheck] = {}
        self.fleet_key = FleetKey(environ)

    async def forward(
        self,
        request: web.Request,
        entry: Entry,
        target: Entry,
        body: bytes,
        payload: dict[str, Any],
        started: float,
        here_only: bool = False,
    ) -> web.StreamResponse:
        """Try instances until one answers (failover before the first byte), then relay.
        `here_only`: a request another host forwarded: this host's instances only."""
        tried: set[str] = target.peer_keys() if here_only else set()
        last_problem = "no instance is ready"
        keyed: Entry | None = None  # the model whose prefix key `prefix` is (once per request)
        prefix: int | None = None
        while True:
            if target.by_prefix() and keyed is None:
                keyed, prefix = target, prefix_key(payload)
            instance = self.table.pick(target, tried, prefix if keyed is target else None)
            fallback = self.table.fallback_of(entry) if target.id == entry.id else None
            if fallback is not None and (fallback.id == target.id or fallback.full()):
                fallback = None  # itself, or a remote one at its limit: nobody to go to
            if fallback is not None and here_only and not fallback.ready_here():
                fallback = None
            if instance is None:
                if fallback is None:
                    raise errors.no_upstream(target.id, last_problem, self.settings().retry_after_s)
                self.metrics.failover(entry.id, Failover.fallback)
                target, tried = fallback, fallback.peer_keys() if here_only else set()
                continue
            tried.add(instance.key)
            # a remote model's endpoint is its one instance: with no fallback it has the last word;
            # so has another host's gateway that is the last to try (its answer says more)
            final = fallback is None and (
                target.route.remote is not None or (instance.peer and _last(target, tried))
            )
            result = await self.attempt(request, instance, target, body, payload, started, final)
            if isinstance(result, web.StreamResponse):
                return result
            last_problem = str(result)
            self.metrics.failover(target.id, result.reason)

    async def attempt(
        self,
        request: web.Request,
        instance: Instance,
        target: Entry,
        body: bytes,
        payload: dict[str, Any],
        started: float,
        final: bool = False,
    ) -> web.StreamResponse | Miss:
        """One try on one instance: a response, or why to try elsewhere (unless `final`: then
        a 502 or 503 is the answer)."""
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
        remote = target.route.remote
        if instance.peer:
            path = request.raw_path
            body = with_model(body, payload, peer_model(payload, target))
            headers = self.fleet_key.headers(headers, self.settings(), target.id, instance)
        elif remote is None:
            path = request.raw_path  # checked by check_client: what the engine gets
            body = with_model(body, payload, target.route.served_name or target.id)
        else:
            key = self.key_for(target.id, remote)
            if key.refusal is not None:
                raise errors.key_withheld(target.id)
            path = endpoint_path(remote.endpoint, request.raw_path)
            body = with_model(body, payload, remote.upstream_model)
            headers = endpoint_headers(remote, headers, key.authorization)
        instance.inflight += 1
        instance.unanswered += 1
        answered = False
        self.metrics.inflight_add(target.id, 1)
        upstream = None
        try:
            try:
                upstream = await self.pool.post(
                    instance.url,
                    path,
                    body,
                    headers,
                    idle_timeout_s=self.settings().upstream_idle_timeout_s,
                )
                if upstream.status in RETRY_STATUSES and not final:
                    reason = RETRY_STATUSES[upstream.status]
                    return Miss(reason, f"the engine answered {upstream.status}")
                content_type = upstream.headers.get("content-type", "application/json")
                streaming = content_type.startswith("text/event-stream")
                if streaming:  # its first chunk before the client's head: a bad one fails over
                    chunks = upstream.iter_chunks()
                    data = await anext(chunks, b"")
                else:
                    data = await upstream.read()
                instance.last_byte_at = time.monotonic()  # an answer is a sign of life too
                instance.unanswered -= 1
                answered = True
            except UpstreamError as exc:
                down_for = PEER_DOWN_FOR_S if instance.peer else DOWN_FOR_S
                instance.down_until = time.monotonic() + down_for
                return Miss(Failover.connection, f"{type(exc).__name__} {exc}")
            instance.served += 1
            out_headers = {
                MODEL_HEADER: target.id,
                INSTANCE_HEADER: instance.id,
                "Content-Type": content_type,
            }
            if instance.peer:
                passed_back(out_headers, upstream.headers, instance.host)
                self.metrics.forwarded(target.id, instance.host, upstream.status)
            if streaming:
                return await self.relay_stream(
                    request,
                    (upstream.status, data, chunks),
                    target.id,
                    out_headers,
                    started,
                    instance,
                )
            self.metrics.first_byte(target.id, time.perf_counter() - started)
            # the host whose engine answered counts its tokens (a fleet's sum counts them once)
            if upstream.status == 200 and b'"usage"' in data and not instance.peer:
                self.record_usage(target.id, data)
            return web.Response(body=data, status=upstream.status, headers=out_headers)
        finally:
            if upstream is not None:
                upstream.close()  # a stream the client left is cut here, which stops the engine
            self.table.touch(target.id)  # before it counts as idle: never idle with one in flight
            instance.inflight -= 1
            if not answered:
                instance.unanswered -= 1
            self.metrics.inflight_add(target.id, -1)
            self.table.retire_if_idle(instance)
            if remote is not None and remote.max_concurrency is not None:
                self.table.freed(target.id)

    async def relay_stream(
        self,
        request: web.Request,
        stream: tuple[int, bytes, AsyncIterator[bytes]],
        model: str,
        headers: dict[str, str],
        started: float,
        instance: Instance,
    ) -> web.StreamResponse:
        """Relay an engine's stream: its status, its first chunk (read already, so that a bad
        one failed over instead) and the rest of its chunks."""
        status, first_chunk, rest = stream
        response = web.StreamResponse(status=status, headers=headers)
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        self.metrics.first_byte(model, time.perf_counter() - started)
        usage = b""
        try:
            async for chunk in _chained(first_chunk, rest):
                instance.last_byte_at = time.monotonic()  # busy, not dead (the daemon's probes)
                await response.write(chunk)
                if b'"usage"' in chunk:
                    usage = chunk  # engines that repeat usage send running totals: keep the last
        except ConnectionResetError:
            return response  # the client left; closing the upstream (attempt) stops the engine
        except UpstreamError as exc:
            # what the client saw cannot be taken back: end the stream with an error event
            error = {
                "error": {
                    "message": f"the engine failed mid-stream: {exc}",
                    "type": "service_unavailable",
                    "code": "upstream_failed",
                }
            }
            await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
        await response.write_eof()
        if usage and not instance.peer:
            self.record_usage(model, usage)
        return response

    def key_for(self, model_id: str, remote: RemoteRoute) -> KeyCheck:
        """The key check of a remote route, made once per route (the environment is the
        process's, fixed at its start), and logged once when the key is withheld."""
        check = self._keys.get((model_id, remote))
        if check is None:
            check = self._keys[(model_id, remote)] = key_check(model_id, remote, self.environ)
            if check.refusal is not None:
                log.error("remote model %s: key withheld: %s", model_id, check.refusal)
        return check

    def record_usage(self, model: str, data: bytes) -> None:
        # a regular expression, not a second JSON parse of every answer: this is the hot path
        for kind, value in USAGE_FIELD.findall(data, data.rfind(b'"usage"')):
            self.metrics.tokens_add(model, kind.decode(), int(value))


def _last(target: Entry, tried: set[str]) -> bool:
    """No instance of `target` is left to try after those in `tried`."""
    return not any(i.routable and i.key not in tried for i in target.instances)


async def _chained(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk

"""What the gateway accepts from clients: connections, request heads, bodies.

Connections: how many the gateway holds open, and which one gives way. Every connection is a
file descriptor. Past the open-files limit the event loop can accept nothing (not even the
daemon's own `/internal/inflight`), so the gateway stays below it with a margin for its engines'
connections: at the cap, a new connection closes the oldest one that is waiting for a request (a
slow or idle client, never one whose request is being answered), and when every connection is
busy the new one is closed at once. A request head must arrive within HEAD_TIMEOUT_S (aiohttp's
keep-alive timer, which runs from the connection's start and is not renewed by a trickle of
bytes), so slow clients give way by themselves as well.

Request heads: what a request must show before the gateway acts on it: a clean path, headers it
can forward, and (when no key protects the gateway) proof that no web page sent it. Without keys
a browser is the threat: any page the operator visits can POST to 127.0.0.1:8000 (a "simple"
cross-site request with `Content-Type: text/plain`) or reach it through a name that resolves to
loopback (DNS rebinding). Requiring a JSON content type forces a CORS preflight the gateway never
grants; refusing cross-site `Origin`/`Sec-Fetch-Site` and foreign `Host` names closes the rest.
With keys configured a page cannot present the key, so these checks step back.

Bodies: each read within BODY_TIMEOUT_S and at most `max_body_bytes`, and all of them together
(read, queued for a starting model, in flight) at most `max_buffered_bytes`. Without the shared
budget, requests queued for a cold model hold their bodies for as long as the model takes to
start: 40 queued 16 MiB bodies took a gateway to 1.37 GB (issue 18). Past the budget a request
is 503 with Retry-After, before its body is read when it declares its length.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from reconciler.gateway import errors
from reconciler.gateway.errors import Refusal
from reconciler.gateway.routes import GatewaySettings

log = logging.getLogger("reconciler.gateway")

# -- connections -------------------------------------------------------------------------------

HEAD_TIMEOUT_S = 10.0
"""a request head (and the next one on a kept-alive connection) must arrive within this"""
RESERVED_FDS = 64
"""descriptors kept for what is not a client: logs, the routes file, the event loop, sockets"""
MAX_OPEN_FILES = 65536


def raise_open_files_limit() -> int:
    """Lift the soft open-files limit to the hard one (bounded) and return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def connection_limit(open_files: int) -> int:
    """Client connections for an open-files limit: half of what is left after the reserve,
    since every client being answered holds a connection to an engine too."""
    return max(8, (open_files - RESERVED_FDS) // 2)


class _Counted(asyncio.Protocol):
    """The server's protocol for one connection, seen through so that the cap knows when it
    opens, whether it is busy, and when it goes."""

    __slots__ = ("inner", "owner", "transport")

    def __init__(self, inner: asyncio.Protocol, owner: Connections) -> None:
        self.inner, self.owner = inner, owner
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.open.pop(self, None)
        self.inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class Connections:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[_Counted, None] = {}
        """in the order they were accepted: the first idle one is the oldest"""
        self.busy: set[object] = set()
        """transports with a request being answered (the server marks them)"""
        self.evicted = 0
        self.refused = 0

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for the listening socket, around the server's own."""

        def accept() -> asyncio.Protocol:
            if len(self.open) >= self.limit and not self._evict_one():
                self.refused += 1
                return _Refused()
            counted = _Counted(make(), self)
            self.open[counted] = None
            return counted

        return accept

    def _evict_one(self) -> bool:
        for counted in self.open:
            transport = counted.transport
            if transport is not None and transport not in self.busy:
                del self.open[counted]
                transport.close()  # the server's handler sees connection_lost and ends
                self.evicted += 1
                return True
        return False


# -- request heads -----------------------------------------------------------------------------

FORWARDED_HEADERS = ("Content-Type", "Accept")
"""the client's headers the engine gets (beside the gateway's own)"""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_PATH = re.compile(r"(?:/[A-Za-z0-9_~!$&'()*+,;=:@.-]+)+")
"""segments of RFC 3986 path characters without `%`, none empty: no OpenAI route needs an escape,
and an escaped dot, slash or control character is how a path means something else to the engine
behind"""
SAFE_QUERY = re.compile(r"[A-Za-z0-9_~!$&'()*+,;=:@./?%-]*")


def path_problem(raw_path: str) -> Refusal | None:
    """A 400 for a request target that is not a plain path: dot segments, empty segments
    (`//`), percent escapes (`%2e%2e`, `%2f`) or characters an engine's parser may split on.
    The raw target is what the gateway forwards, so what is checked is what the engine gets."""
    path, _, query = raw_path.partition("?")
    if path != "/":
        if not SAFE_PATH.fullmatch(path):
            return errors.bad_path()
        ended = path + "/"
        if "/./" in ended or "/../" in ended:
            return errors.bad_path()
    if not SAFE_QUERY.fullmatch(query):
        return errors.bad_path()
    return None


def host_name(value: str) -> str:
    """The name of a Host header or an origin's authority, without port, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, colon, port = value.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        value = name
    return value.rstrip(".")


class Guard:
    """The browser-facing checks of a gateway without keys (see the module docstring)."""

    def __init__(self, listen_host: str) -> None:
        self.names = LOCAL_NAMES | {host_name(listen_host)}

    def browser_problem(
        self, host: str | None, origin: str | None, fetch_site: str | None
    ) -> Refusal | None:
        if host is None or host_name(host) not in self.names:
            return errors.foreign_host()
        if fetch_site is not None and fetch_site.strip().lower() == "cross-site":
            return errors.cross_site()
        if origin is not None and not self.local_origin(origin):
            return errors.cross_site()
        return None

    def local_origin(self, origin: str) -> bool:
        scheme, sep, authority = origin.strip().partition("://")
        if not sep or scheme.lower() not in ("http", "https") or "/" in authority:
            return False  # "null" (sandboxed frames, file:) included
        return host_name(authority.rpartition("@")[2]) in self.names


def is_json(content_type: str | None) -> bool:
    """application/json, parameters allowed (`; charset=utf-8`)."""
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == "application/json"


def unforwardable(values: Iterable[str]) -> Refusal | None:
    """A 400 for a header value the gateway would pass to the engine but cannot (non-ASCII,
    control characters): the engine's request head is written as plain ASCII."""
    for value in values:
        if not (value.isascii() and value.isprintable()):
            return errors.bad_header()
    return None


def check(guard: Guard, request: web.Request, has_keys: bool) -> None:
    """Raise the Refusal for what this request lacks (see the module docstring)."""
    refusal = path_problem(request.raw_path)
    headers = request.headers
    post = request.method == "POST"
    if refusal is None and not has_keys:
        refusal = guard.browser_problem(
            headers.get("Host"), headers.get("Origin"), headers.get("Sec-Fetch-Site")
        )
        if refusal is None and post and not is_json(headers.get("Content-Type")):
            refusal = errors.not_json()
    if refusal is None and post:
        refusal = unforwardable([headers[h] for h in FORWARDED_HEADERS if h in headers])
    if refusal is not None:
        raise refusal


def client_middleware(
    guard: Guard, has_keys: Callable[[], bool], connections: Connections
) -> Middleware:
    """`check` before any route; the connection counts as busy (not to be closed for a
    newcomer) while its request is answered; and a fault no check foresaw is one log line and an
    error in OpenAI's shape, not a traceback per request."""

    @web.middleware
    async def checked(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        busy = connections.busy
        busy.add(transport)
        try:
            check(guard, request, has_keys())
            return await handler(request)
        except Refusal as refusal:
            return refusal.response("")
        except (web.HTTPException, ConnectionError):
            raise
        except Exception as exc:
            log.error(
                "%s %s: %s: %s",
                request.method,
                errors.shown(request.path),
                type(exc).__name__,
                errors.shown(str(exc)),
            )
            return errors.internal().response("")
        finally:
            busy.discard(transport)

    return checked


# -- bodies ------------------------------------------------------------------------------------

BODY_TIMEOUT_S = 60.0
"""a body must arrive within this once its head has: a trickle would hold budget for ever"""


@dataclass
class Claim:
    """The bytes of the budget one request holds; given back by Bodies.release."""

    size: int = 0


class Bodies:
    def __init__(self) -> None:
        self.held = 0
        """bytes of every claim together"""

    def take(self, claim: Claim, size: int, settings: GatewaySettings) -> None:
        budget = settings.max_buffered_bytes
        if self.held + size > budget:
            raise errors.over_budget(budget / 2**20, settings.retry_after_s)
        self.held += size
        claim.size += size

    def release(self, claim: Claim) -> None:
        self.held -= claim.size
        claim.size = 0

    async def read_json(
        self, request: web.Request, settings: GatewaySettings, claim: Claim
    ) -> tuple[bytes, dict[str, Any]]:
        """The body and its JSON object (with a string `model`), or a Refusal."""
        limit = settings.max_body_bytes
        too_big = errors.too_big(limit)
        declared = request.content_length
        if declared is not None and declared > limit:
            raise too_big
        self.take(claim, declared or 0, settings)
        body = bytearray()
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                async for chunk in request.content.iter_any():
                    body += chunk
                    if len(body) > limit:
                        raise too_big
                    if len(body) > claim.size:  # a chunked body, or one longer than declared
                        self.take(claim, len(body) - claim.size, settings)
        except TimeoutError:
            raise errors.body_timeout(BODY_TIMEOUT_S) from None
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise errors.bad_json(exc) from None
        except RecursionError:
            raise errors.too_deep() from None
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
            raise errors.missing_model()
        return bytes(body), payload

"""What a client's request must show before the gateway acts on it: a clean path, headers it can
forward, and (when no key protects the gateway) proof that no web page sent it.

Without keys a browser is the threat: any page the operator visits can POST to 127.0.0.1:8000
(a "simple" cross-site request with `Content-Type: text/plain`) or reach it through a name that
resolves to loopback (DNS rebinding). Requiring a JSON content type forces a CORS preflight the
gateway never grants; refusing cross-site `Origin`/`Sec-Fetch-Site` and foreign `Host` names
closes the rest. With keys configured a page cannot present the key, so these checks step back.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from reconciler.gateway import errors
from reconciler.gateway.connections import Connections
from reconciler.gateway.errors import Refusal

log = logging.getLogger("reconciler.gateway")
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
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
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

"""What a request to the API must show: who may ask it to act (POST /api/v1/reconcile,
/api/v1/models/{id}/restart), and a body within a size limit, parsed as JSON with its errors
said plainly.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
from typing import NoReturn
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body accepted (a push event of a big merge is a few hundred KiB)."""


class BodyLimit:
    """Refuse a declared body over the limit before anything reads it (pure ASGI, so that
    streaming responses pass through untouched)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", []):
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    detail = f"request body over {self.limit} bytes"
                    response = JSONResponse({"detail": detail}, status_code=413)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def read_limited(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body; 413 as soon as it passes `limit` (chunked bodies declare no length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]}... is too large")
    return value


def json_object(body: bytes | str, what: str = "body") -> dict[str, object]:
    """`body` parsed as a JSON object; HTTP 400 naming the problem for anything else."""
    try:
        payload = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
        # a lone surrogate (\ud800) parses, and fails whatever encodes it later: find it now
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except RecursionError as exc:
        raise HTTPException(400, f"malformed {what}: JSON nested too deeply") from exc
    except UnicodeError as exc:
        raise HTTPException(400, f"malformed {what}: not valid UTF-8 or Unicode") from exc
    except ValueError as exc:
        raise HTTPException(400, f"malformed {what}: {_short(exc)}") from exc
    if not isinstance(payload, dict):
        raise HTTPException(400, f"malformed {what}: expected a JSON object")
    return payload


def _short(exc: Exception, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _bearer(header: str | None) -> bytes | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _host_name(host_header: str) -> str:
    """`127.0.0.1:8080` -> 127.0.0.1, `[::1]:8080` -> ::1, `localhost` -> localhost."""
    return urlsplit(f"//{host_header}").hostname or ""


def _same_site_browser(request: Request) -> bool:
    """False for a request that a web page of another origin made through the user's browser
    (browsers send Sec-Fetch-Site and Origin; command-line clients send neither)."""
    if request.headers.get("sec-fetch-site", "none") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")  # "null" never matches


def authorize(request: Request, token: str | None) -> None:
    """Raise 401/403 unless this request may act (see the module docstring)."""
    if token:
        given = _bearer(request.headers.get("authorization"))
        if given is None or not hmac.compare_digest(given, token.encode("utf-8")):
            raise HTTPException(
                401,
                "missing or wrong bearer token (Authorization: Bearer <RECONCILER_API_TOKEN>)",
                headers={"WWW-Authenticate": 'Bearer realm="reconciler"'},
            )
        return
    client = request.client.host if request.client else None
    if not _is_loopback(client):
        raise HTTPException(
            401,
            "no API token is configured: actions are accepted from this host only "
            "(set RECONCILER_API_TOKEN to allow others)",
            headers={"WWW-Authenticate": 'Bearer realm="reconciler"'},
        )
    host = _host_name(request.headers.get("host", ""))
    if host not in LOOPBACK_NAMES or not _same_site_browser(request):
        raise HTTPException(
            403, "refused: a cross-site or non-loopback-named request needs an API token"
        )

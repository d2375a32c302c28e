"""The routes that ask the loop to act, and who may: POST /api/v1/reconcile and
/api/v1/models/{id}/restart (bearer token), /api/v1/hooks/git (a push from GitHub, Gitea,
Forgejo or Gogs, HMAC-SHA256 signed); every request body within a size limit, parsed as JSON
with its errors said plainly.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
from collections.abc import Mapping
from typing import NoReturn
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from reconciler.api.api_service import LinkError
from reconciler.api.responses import AcceptedOut, errors
from reconciler.api.views import Views

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


def ask_daemon(views: Views, op: str, **args: str) -> None:
    """One action of the loop; 503 when no daemon answers."""
    if views.link is None:
        raise HTTPException(503, "no reconcile loop is attached to this API")
    try:
        views.link.call(op, **args)
    except LinkError as exc:
        raise HTTPException(503, f"the reconcile loop does not answer: {exc}") from exc


def actions_router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["actions"])
    token = views.settings.api_token

    @routes.post(
        "/reconcile", status_code=202, response_model=AcceptedOut, responses=errors(401, 403, 503)
    )
    def reconcile(request: Request) -> AcceptedOut:
        """Run a reconcile pass now (bearer token)."""
        authorize(request, token)
        ask_daemon(views, "reconcile", reason="api")
        return AcceptedOut(status="accepted", detail="a reconcile pass is queued")

    @routes.post(
        "/models/{model_id}/restart",
        status_code=202,
        response_model=AcceptedOut,
        responses=errors(401, 403, 404, 503),
    )
    def restart(request: Request, model_id: str = PathParam(max_length=253)) -> AcceptedOut:
        """Restart a model's engine, clearing a given-up error (bearer token)."""
        authorize(request, token)
        if model_id not in views.specs():  # also keeps arbitrary names out of the file system
            raise HTTPException(404, f"no model {model_id!r} in the desired state in force")
        ask_daemon(views, "restart", model=model_id)
        return AcceptedOut(status="accepted", detail=f"{model_id} restarts in the next pass")

    return routes


log = logging.getLogger("reconciler.api")

SIGNATURE_HEADERS = (
    "x-hub-signature-256",  # GitHub: "sha256=<hex>"
    "x-gitea-signature",  # Gitea: "<hex>"
    "x-forgejo-signature",  # Forgejo (also sends the Gitea header)
    "x-gogs-signature",  # Gogs
)
EVENT_HEADERS = ("x-github-event", "x-gitea-event", "x-forgejo-event", "x-gogs-event")


class PushEvent(BaseModel):
    """The part of a GitHub/Gitea push event the reconciler reads (documentation only: the
    signature is checked over the raw body before it is parsed)."""

    model_config = ConfigDict(extra="allow")

    ref: str = Field(description="refs/heads/<branch>; other branches are ignored")
    after: str | None = None
    deleted: bool | None = None


def signature_valid(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """True when one of the signature headers is the HMAC-SHA256 of `body` with `secret`."""
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest().encode()
    valid = False
    for name in SIGNATURE_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        given = value.strip().removeprefix("sha256=").lower().encode("latin-1", "replace")
        # compare every header present, in constant time, without stopping at the first match
        valid |= hmac.compare_digest(given, expected)
    return valid


def push_payload(body: bytes, content_type: str) -> dict[str, object]:
    """The JSON event; GitHub's form encoding (payload=<json>) is accepted too. 400 if bad."""
    what = "webhook body"
    if content_type.startswith("application/x-www-form-urlencoded"):
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=True)
            return json_object(form["payload"][0], what)
        except (ValueError, KeyError, IndexError) as exc:  # UnicodeDecodeError is a ValueError
            raise HTTPException(400, f"malformed {what}: {exc!s:.200}") from exc
    return json_object(body, what)


def webhook_event(headers: Mapping[str, str], payload: Mapping[str, object]) -> str:
    for name in EVENT_HEADERS:
        if headers.get(name):
            return headers[name].strip().lower()
    return "push" if "ref" in payload else "unknown"


def on_push(views: Views, event: str, payload: Mapping[str, object]) -> AcceptedOut | JSONResponse:
    branch = views.settings.branch
    if event == "ping":
        return JSONResponse({"status": "pong", "detail": "webhook configured"}, status_code=200)
    if event != "push":
        return AcceptedOut(status="ignored", detail=f"{event} events are not followed")
    ref = payload.get("ref")
    if ref != f"refs/heads/{branch}":
        detail = f"push to {ref!s:.200}, not refs/heads/{branch}"
        return AcceptedOut(status="ignored", detail=detail)
    if payload.get("deleted"):
        return AcceptedOut(status="ignored", detail=f"{branch} was deleted: nothing to fetch")
    after = str(payload.get("after") or "")[:12]
    ask_daemon(views, "webhook", detail=f"push to {branch} {after}".rstrip())
    return AcceptedOut(status="accepted", detail=f"fetching {branch} and reconciling")


def webhook_router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["actions"])
    secret = views.settings.webhook_secret

    @routes.post(
        "/hooks/git",
        status_code=202,
        response_model=AcceptedOut,
        responses={200: {"model": AcceptedOut}, **errors(400, 401, 413, 503)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PushEvent.model_json_schema()}},
            }
        },
    )
    async def git_hook(request: Request) -> AcceptedOut | JSONResponse:
        """A push from GitHub, Gitea or Forgejo (HMAC-SHA256 signed): fetch and reconcile."""
        if not secret:
            raise HTTPException(
                503, "webhook disabled: set RECONCILER_WEBHOOK_SECRET (the secret of the hook)"
            )
        body = await read_limited(request)
        if not signature_valid(secret, body, request.headers):
            log.warning("webhook with a missing or wrong signature from %s", request.client)
            raise HTTPException(401, "missing or wrong webhook signature")
        payload = push_payload(body, request.headers.get("content-type", ""))
        return on_push(views, webhook_event(request.headers, payload), payload)

    return routes

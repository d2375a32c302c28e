"""The routes that ask the loop to act: POST /api/v1/reconcile and /api/v1/models/{id}/restart
(bearer token), and /api/v1/hooks/git (a push from GitHub, Gitea, Forgejo or Gogs,
HMAC-SHA256 signed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from reconciler.api.api_service import LinkError
from reconciler.api.auth import authorize, json_object, read_limited
from reconciler.api.responses import AcceptedOut, errors
from reconciler.api.views import Views


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

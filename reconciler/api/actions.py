"""POST /api/v1/reconcile and /api/v1/models/{id}/restart: requests to the loop (auth.py says
who may make them). Neither reads a body: whatever a client sends with them is ignored."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam

from .auth import authorize
from .link import LinkError
from .responses import AcceptedOut, errors
from .views import Views


def ask_daemon(views: Views, op: str, **args: str) -> None:
    """One action of the loop; 503 when no daemon answers."""
    if views.link is None:
        raise HTTPException(503, "no reconcile loop is attached to this API")
    try:
        views.link.call(op, **args)
    except LinkError as exc:
        raise HTTPException(503, f"the reconcile loop does not answer: {exc}") from exc


def router(views: Views) -> APIRouter:
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

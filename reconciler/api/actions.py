"""POST /api/v1/reconcile and /api/v1/models/{id}/restart: requests to the loop (auth.py says
who may make them). Neither reads a body: whatever a client sends with them is ignored."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam

from .auth import authorize
from .responses import AcceptedOut, errors
from .views import Views


def router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["actions"])
    token = views.settings.api_token
    controller = views.daemon.controller

    @routes.post(
        "/reconcile", status_code=202, response_model=AcceptedOut, responses=errors(401, 403)
    )
    def reconcile(request: Request) -> AcceptedOut:
        """Run a reconcile pass now (bearer token)."""
        authorize(request, token)
        controller.trigger("api")
        return AcceptedOut(status="accepted", detail="a reconcile pass is queued")

    @routes.post(
        "/models/{model_id}/restart",
        status_code=202,
        response_model=AcceptedOut,
        responses=errors(401, 403, 404),
    )
    def restart(request: Request, model_id: str = PathParam(max_length=253)) -> AcceptedOut:
        """Restart a model's engine, clearing a given-up error (bearer token)."""
        authorize(request, token)
        if model_id not in views.specs():  # also keeps arbitrary names out of the file system
            raise HTTPException(404, f"no model {model_id!r} in the desired state in force")
        views.reconciler.request_restart(model_id)
        controller.trigger(f"restart {model_id} (api)")
        return AcceptedOut(status="accepted", detail=f"{model_id} restarts in the next pass")

    return routes

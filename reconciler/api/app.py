"""The FastAPI application of the API process: the route groups of this package, assembled."""

from __future__ import annotations

from fastapi import FastAPI

from reconciler import __version__

from . import actions, dashboard, events, gpus, models, plan, probes, status, traffic, webhook
from .body import BodyLimit
from .views import Views


def create_app(views: Views) -> FastAPI:
    """The application that serves a daemon's status, plan, events, metrics and actions."""
    app = FastAPI(
        title="reconciler",
        version=__version__,
        description="Status, plan, events and metrics of a GitOps reconciler for LLM inference "
        "engines. Desired state comes only from git: nothing here changes a spec.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.include_router(probes.router(views))
    for group in (status, models, gpus, plan, events, traffic, actions, webhook):
        app.include_router(group.router(views), prefix="/api/v1")
    dashboard.mount(app)
    app.add_middleware(BodyLimit)
    return app

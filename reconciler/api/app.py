"""The FastAPI application of the API process: the route groups of this package assembled, and
the dashboard (GET / and its /web/* files from reconciler/web/).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from reconciler import __version__
from reconciler.api import activity_routes, probes, status_routes, triggers
from reconciler.api.triggers import BodyLimit
from reconciler.api.views import Views

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
DASHBOARD_HEADERS = {
    # the dashboard builds its DOM from API data with textContent only; the CSP is the backstop
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def mount(app: FastAPI, web_dir: Path = WEB_DIR) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> Response:
        page = web_dir / "index.html"
        if not page.is_file():  # installed without its package data
            return JSONResponse({"detail": f"dashboard files missing from {web_dir}"}, 404)
        return FileResponse(page, headers=DASHBOARD_HEADERS)

    if web_dir.is_dir():
        app.mount("/web", StaticFiles(directory=web_dir), name="web")


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
    for router in (
        status_routes.status_router(views),
        status_routes.models_router(views),
        status_routes.gpus_router(views),
        activity_routes.plan_router(views),
        activity_routes.events_router(views),
        status_routes.traffic_router(views),
        triggers.actions_router(views),
        triggers.webhook_router(views),
    ):
        app.include_router(router, prefix="/api/v1")
    mount(app)
    app.add_middleware(BodyLimit)
    return app

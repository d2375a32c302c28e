"""GET / (the dashboard page) and /web/* (its script and style), from reconciler/web/."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

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

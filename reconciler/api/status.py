"""GET /api/v1/status and /api/v1/history: loop progress, the applied revision, its commits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from reconciler import __version__

from .models import list_models
from .readiness import UNAVAILABLE, require_first_pass
from .responses import HistoryOut, ProblemOut, StatusOut
from .views import Views


def status_out(views: Views) -> StatusOut:
    state = views.state()
    counts: dict[str, int] = {}
    for model in list_models(views)[0]:
        counts[model.status.value] = counts.get(model.status.value, 0) + 1
    problems = [ProblemOut(**p) for p in (state.problems if state else [])]
    loop = views.bulletin()
    plan = loop.plan if loop is not None else None
    return StatusOut(
        version=__version__,
        ready=loop is not None and loop.passes > 0,
        passes=loop.passes if loop is not None else 0,
        last_pass_at=loop.last_pass_at if loop is not None else None,
        last_pass_reasons=list(loop.last_reasons) if loop is not None else [],
        last_plan=plan.summary if plan is not None and plan.valid else None,
        revision=views.revision(state),
        valid=not problems,  # from the same record as `problems`, so that the two agree
        problems=problems,
        models=counts,
    )


def router(views: Views) -> APIRouter:
    routes = APIRouter(tags=["status"])

    @routes.get("/status", response_model=StatusOut, responses=UNAVAILABLE)
    def status() -> StatusOut:
        """Loop progress, the applied revision and its commit, validation problems (503 before
        the first pass: /readyz tells the progress until then)."""
        require_first_pass(views)
        return status_out(views)

    @routes.get("/history", response_model=list[HistoryOut])
    def history(limit: int = Query(20, ge=1, le=200)) -> list[dict[str, Any]]:
        """Commits that changed desired state, newest first, and what became of each here."""
        return views.history(limit)

    return routes

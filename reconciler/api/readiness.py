"""Until the daemon has published its first pass, the API does not know what runs.

Before the bulletin of this run exists, the API process has only what an earlier run left (a
state file, the last valid desired state), or nothing: an empty model list then would read as
"nothing is configured". So every route that answers from the loop's view (status, models, GPUs,
the plan) answers 503 with Retry-After until the first pass, and /readyz says not ready. The
first pass usually takes a second or two; a slow git remote can hold it for as long as a clone.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from .responses import ErrorOut
from .views import Views

RETRY_AFTER_S = 1
NOT_READY_DETAIL = "the reconciler has not finished its first pass yet: retry shortly"

RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "seconds to wait before asking again",
        "schema": {"type": "integer"},
    }
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorOut,
        "description": "the first pass has not finished (or the GPU inventory is unavailable)",
        "headers": RETRY_AFTER_HEADER,
    }
}
"""the OpenAPI description of a route that waits for the first pass"""


def unavailable(detail: str) -> HTTPException:
    """A 503 that tells the client when to ask again."""
    return HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


def require_first_pass(views: Views) -> None:
    """Raise the 503 when this run's daemon has not published a pass yet."""
    if not views.first_pass_done():
        raise unavailable(NOT_READY_DETAIL)

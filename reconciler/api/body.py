"""Request bodies: a size limit before anything reads them, and a JSON parse in which whatever
the parser can choke on is the client's 400, never our 500.

The parser chokes on more than syntax: nesting deeper than the interpreter's recursion limit
(RecursionError), integers of more than 4,300 digits (ValueError), bytes that are not UTF-8, lone
UTF-16 surrogates (which parse, then fail when anything encodes them again), NaN and Infinity
(not JSON, and they fail JSON responses), numbers too big for a float (infinite).
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

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


def json_object(body: bytes | str, what: str = "body") -> dict[str, Any]:
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

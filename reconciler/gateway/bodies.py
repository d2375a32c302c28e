"""Request bodies: each read within BODY_TIMEOUT_S and at most `max_body_bytes`, and all of them
together (read, queued for a starting model, in flight) at most `max_buffered_bytes`.

Without the shared budget, requests queued for a cold model hold their bodies for as long as the
model takes to start: 40 queued 16 MiB bodies took a gateway to 1.37 GB (issue 18). Past the
budget a request is 503 with Retry-After, before its body is read when it declares its length.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from aiohttp import web

from reconciler.gateway import errors
from reconciler.gateway.routes import GatewaySettings

BODY_TIMEOUT_S = 60.0
"""a body must arrive within this once its head has: a trickle would hold budget for ever"""


@dataclass
class Claim:
    """The bytes of the budget one request holds; given back by Bodies.release."""

    size: int = 0


class Bodies:
    def __init__(self) -> None:
        self.held = 0
        """bytes of every claim together"""

    def take(self, claim: Claim, size: int, settings: GatewaySettings) -> None:
        budget = settings.max_buffered_bytes
        if self.held + size > budget:
            raise errors.over_budget(budget / 2**20, settings.retry_after_s)
        self.held += size
        claim.size += size

    def release(self, claim: Claim) -> None:
        self.held -= claim.size
        claim.size = 0

    async def read_json(
        self, request: web.Request, settings: GatewaySettings, claim: Claim
    ) -> tuple[bytes, dict]:
        """The body and its JSON object (with a string `model`), or a Refusal."""
        limit = settings.max_body_bytes
        too_big = errors.too_big(limit)
        declared = request.content_length
        if declared is not None and declared > limit:
            raise too_big
        self.take(claim, declared or 0, settings)
        body = bytearray()
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                async for chunk in request.content.iter_any():
                    body += chunk
                    if len(body) > limit:
                        raise too_big
                    if len(body) > claim.size:  # a chunked body, or one longer than declared
                        self.take(claim, len(body) - claim.size, settings)
        except TimeoutError:
            raise errors.body_timeout(BODY_TIMEOUT_S) from None
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise errors.bad_json(exc) from None
        except RecursionError:
            raise errors.too_deep() from None
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
            raise errors.missing_model()
        return bytes(body), payload

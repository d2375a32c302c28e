"""The API yields to the loop: a request that arrives while a pass runs waits for it to end.

The API shares the daemon's interpreter with the reconcile loop, so under heavy HTTP load the two
take turns on one lock (the GIL) and passes slow down (45 % at saturation, measured). Letting a
pass finish first keeps passes near their idle duration at any load; a request waits at most
`max_wait_s` (a pass that stops an engine can take seconds, most of them sleeping), so a long pass
delays an answer, never refuses it.
"""

from __future__ import annotations

import asyncio
import threading

from starlette.types import ASGIApp, Receive, Scope, Send

POLL_S = 0.005


class YieldToLoop:
    def __init__(self, app: ASGIApp, idle: threading.Event, max_wait_s: float = 0.5) -> None:
        self.app, self.idle, self.max_wait_s = app, idle, max_wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.max_wait_s > 0 and not self.idle.is_set():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.max_wait_s
            while not self.idle.is_set() and loop.time() < deadline:
                await asyncio.sleep(POLL_S)
        await self.app(scope, receive, send)

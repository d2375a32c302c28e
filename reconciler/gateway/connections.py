"""Client connections: how many the gateway holds open, and which one gives way.

Every connection is a file descriptor. Past the open-files limit the event loop can accept
nothing (not even the daemon's own `/internal/inflight`), so the gateway stays below it with a
margin for its engines' connections: at the cap, a new connection closes the oldest one that is
waiting for a request (a slow or idle client, never one whose request is being answered), and
when every connection is busy the new one is closed at once. A request head must arrive within
HEAD_TIMEOUT_S (aiohttp's keep-alive timer, which runs from the connection's start and is not
renewed by a trickle of bytes), so slow clients give way by themselves as well.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable

HEAD_TIMEOUT_S = 10.0
"""a request head (and the next one on a kept-alive connection) must arrive within this"""
RESERVED_FDS = 64
"""descriptors kept for what is not a client: logs, the routes file, the event loop, sockets"""
MAX_OPEN_FILES = 65536


def raise_open_files_limit() -> int:
    """Lift the soft open-files limit to the hard one (bounded) and return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def connection_limit(open_files: int) -> int:
    """Client connections for an open-files limit: half of what is left after the reserve,
    since every client being answered holds a connection to an engine too."""
    return max(8, (open_files - RESERVED_FDS) // 2)


class _Counted(asyncio.Protocol):
    """The server's protocol for one connection, seen through so that the cap knows when it
    opens, whether it is busy, and when it goes."""

    __slots__ = ("inner", "owner", "transport")

    def __init__(self, inner: asyncio.Protocol, owner: Connections) -> None:
        self.inner, self.owner = inner, owner
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.open.pop(self, None)
        self.inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class Connections:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[_Counted, None] = {}
        """in the order they were accepted: the first idle one is the oldest"""
        self.busy: set[object] = set()
        """transports with a request being answered (the server marks them)"""
        self.evicted = 0
        self.refused = 0

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for the listening socket, around the server's own."""

        def accept() -> asyncio.Protocol:
            if len(self.open) >= self.limit and not self._evict_one():
                self.refused += 1
                return _Refused()
            counted = _Counted(make(), self)
            self.open[counted] = None
            return counted

        return accept

    def _evict_one(self) -> bool:
        for counted in self.open:
            transport = counted.transport
            if transport is not None and transport not in self.busy:
                del self.open[counted]
                transport.close()  # the server's handler sees connection_lost and ends
                self.evicted += 1
                return True
        return False

"""A lean HTTP/1.1 client for the engines: kept-alive connections per instance, nothing more.

aiohttp's client spent most of the gateway's time per request (measured with cProfile under
wrk); this one does what the proxy needs (POST a body, read the head, then the whole body or its
chunks as they come) on asyncio protocols. Engines are on loopback and speak plain HTTP/1.1
(or 1.0: the body then ends when the connection does).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 5.0
MAX_HEAD_BYTES = 65536


class UpstreamError(Exception):
    """The engine's connection failed or broke before its answer was complete."""


def take_chunks(buffer: bytearray) -> tuple[bytes, bool]:
    """Decode (and remove) the complete chunks of a chunked body at the start of `buffer`, all
    at once: a relay then writes what arrived together in one go. True once the body ended."""
    parts, pos, size_of = [], 0, len(buffer)
    while (eol := buffer.find(b"\r\n", pos)) >= 0:
        try:
            size = int(bytes(buffer[pos:eol]).split(b";")[0], 16)
        except ValueError as exc:
            raise UpstreamError(f"bad chunk size from the engine: {exc}") from exc
        if size == 0:  # the last chunk; engines send no trailers, so an empty line follows
            end = buffer.find(b"\r\n", eol + 2)
            if end < 0:
                break
            del buffer[: end + 2]
            return b"".join(parts), True
        start = eol + 2
        if size_of < start + size + 2:
            break
        parts.append(bytes(buffer[start : start + size]))
        pos = start + size + 2
    del buffer[:pos]
    return b"".join(parts), False


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed, self.error = True, exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _more(self) -> None:
        if self.closed:
            raise UpstreamError(f"the engine closed the connection ({self.error or 'EOF'})")
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter
        self._waiter = None

    async def read_until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise UpstreamError("the engine's answer has no end of head")
            await self._more()
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(marker)]
        return data

    async def read_upto(self, size: int) -> bytes:
        """Between 1 and `size` bytes, as soon as any have arrived."""
        if not self.buffer:
            await self._more()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_some(self) -> bytes:
        """What has arrived (waiting for something); b"" at the end of the connection."""
        if not self.buffer:
            if self.closed:
                return b""
            try:
                await self._more()
            except UpstreamError:
                return b""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    def __init__(
        self, pool: Pool, key: str, conn: _Connection, status: int, headers: dict[str, str]
    ) -> None:
        self._pool, self._key, self._conn = pool, key, conn
        self.status, self.headers = status, headers
        self.done = False
        self._keep_alive = headers.get("connection", "").lower() != "close"
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._length = int(length) if length is not None and not self._chunked else None
        if self._length is None and not self._chunked:
            self._keep_alive = False  # the body ends with the connection

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked encoding removed); the connection goes back to the
        pool once the body was read to its end."""
        conn = self._conn
        if self._length is not None:
            remaining = self._length
            while remaining:
                data = await conn.read_upto(remaining)
                remaining -= len(data)
                yield data
        elif self._chunked:
            while True:
                data, finished = take_chunks(conn.buffer)
                if data:
                    yield data
                if finished:
                    break
                if not data:
                    await conn._more()
        else:
            while data := await conn.read_some():
                yield data
        self.done = True
        if self._keep_alive and not conn.closed and not conn.buffer:
            self._pool.put_back(self._key, conn)
        else:
            conn.close()

    def close(self) -> None:
        """Give up on the rest of the body: the connection is closed (the engine sees it)."""
        if not self.done:
            self.done = True
            self._conn.close()


class Pool:
    def __init__(self) -> None:
        self._idle: dict[str, list[_Connection]] = {}

    def put_back(self, key: str, conn: _Connection) -> None:
        self._idle.setdefault(key, []).append(conn)

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, host, port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect: {exc}") from exc
        return conn

    async def post(self, base: str, path: str, body: bytes, headers: dict[str, str]) -> Response:
        """POST and read the answer's head. A kept-alive connection that turns out closed is
        replaced once by a new one (the engine may have dropped it while idle)."""
        parts = urlsplit(base)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        idle = self._idle.get(base)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            try:
                return await self._exchange(base, conn, request)
            except UpstreamError:
                if conn.buffer:  # the engine had started answering: not a stale connection
                    raise
        return await self._exchange(base, await self._connect(host, port), request)

    async def _exchange(self, key: str, conn: _Connection, request: bytes) -> Response:
        try:
            assert conn.transport is not None
            conn.transport.write(request)
            head = (await conn.read_until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
        except (UpstreamError, ValueError, IndexError) as exc:
            conn.close()
            raise UpstreamError(str(exc)) from exc
        except BaseException:
            conn.close()  # cancelled: the client left; the engine sees the connection go
            raise
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Response(self, key, conn, status, headers)

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

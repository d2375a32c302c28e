"""A lean HTTP/1.1 client for the engines: kept-alive connections per instance, nothing more.
Remote models' https endpoints get the same client over TLS (the event loop's own, with the
context the pool is given: certificates and host names verified).

aiohttp's client spent most of the gateway's time per request (measured with cProfile under
wrk); this one does what the proxy needs (POST a body, read the head, then the whole body or its
chunks as they come) on asyncio protocols. Engines are on loopback and speak plain HTTP/1.1
(or 1.0: the body then ends when the connection does).

It trusts no engine (any spec author can run one): answers are framed strictly (framing.py),
and whatever does not parse is an UpstreamError that drops the connection; it stops reading from
an engine while more than BUFFER_HIGH_BYTES wait for the relay (back-pressure: a client that
does not read holds a bounded amount); and a wait for the engine's next byte, the first
included, ends after the idle timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

from reconciler.gateway.framing import (
    MAX_HEAD_BYTES,
    ChunkDecoder,
    Head,
    UpstreamError,
    framing,
    parse_head,
)

CONNECT_TIMEOUT_S = 5.0
DEFAULT_IDLE_TIMEOUT_S = 600.0
"""the openai client's own default timeout: a non-streaming answer sends nothing until the
whole generation is done, so this bounds a generation, not only a silence"""
MAX_INTERIM_HEADS = 4
"""1xx heads skipped before the real answer (nothing asks for them; a few are tolerated)"""
MAX_BODY_BYTES = 128 * 1024 * 1024
"""a non-streaming answer is held whole before it is relayed: bounded"""
SWEEP_S = 0.25
"""how often waits are checked against their idle timeout (one sweep per pool, not one timer
per wait: that would cost every request a timer and its cancellation)"""
BUFFER_HIGH_BYTES = 256 * 1024
BUFFER_LOW_BYTES = 64 * 1024
"""reading from the engine pauses above HIGH unread bytes and resumes at LOW"""


class _Connection(asyncio.Protocol):
    def __init__(self, waiting: set[_Connection]) -> None:
        self._waiting = waiting
        """the pool's connections in a wait, which its sweeper checks"""
        self.waiting_since = 0.0
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.error: Exception | None = None
        self.received = 0
        """bytes received over the connection's life: did the engine answer at all?"""
        self.idle_timeout_s = DEFAULT_IDLE_TIMEOUT_S
        self.timed_out = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received += len(data)
        if len(self.buffer) > BUFFER_HIGH_BYTES and not self._paused:
            self._paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = self.error or exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def idle_expired(self) -> None:
        self.timed_out = True
        self.error = TimeoutError(f"no byte from the engine in {self.idle_timeout_s:g} s")
        self.close()
        self._wake()

    def consumed(self) -> None:
        """The relay took bytes from the buffer: read from the engine again once it is low."""
        if self._paused and len(self.buffer) <= BUFFER_LOW_BYTES:
            self._paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    async def more(self) -> None:
        """Wait until more bytes, the end of the connection, or the idle timeout."""
        if self.closed:
            raise UpstreamError(f"the engine closed the connection ({self.error or 'EOF'})")
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self.waiting_since = loop.time()
        self._waiting.add(self)
        try:
            await waiter
        finally:
            self._waiting.discard(self)
            self._waiter = None
        if self.timed_out:
            raise UpstreamError(str(self.error))

    async def read_head(self) -> bytes:
        start = 0
        while (end := self.buffer.find(b"\r\n\r\n", start)) < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise UpstreamError("the engine's answer has no end of head")
            start = max(0, len(self.buffer) - 3)
            await self.more()
        if end > MAX_HEAD_BYTES:
            raise UpstreamError("the engine's answer has no end of head")
        data = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        self.consumed()
        return data

    async def read_upto(self, size: int) -> bytes:
        """Between 1 and `size` bytes, as soon as any have arrived."""
        while not self.buffer:
            await self.more()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        self.consumed()
        return data

    async def read_some(self) -> bytes:
        """What has arrived (waiting for something); b"" at the end of the connection."""
        while not self.buffer:
            if self.closed and not self.timed_out:
                return b""
            await self.more()
        data = bytes(self.buffer)
        self.buffer.clear()
        self.consumed()
        return data

    def send(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise UpstreamError("the connection to the engine is closed")
        try:
            self.transport.write(data)
        except (RuntimeError, OSError) as exc:  # uvloop: "handler is closed" on one just gone
            raise UpstreamError(f"cannot send to the engine: {exc}") from exc

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    def __init__(self, pool: Pool, key: str, conn: _Connection, head: Head) -> None:
        self._pool, self._key, self._conn = pool, key, conn
        self.status, self.headers = head.status, head.headers
        self.done = False
        self._framing = framing(head)

    async def read(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """The whole body; UpstreamError past `limit` bytes."""
        length = self._framing.length
        if length is not None and length > limit:
            self.close()
            raise UpstreamError(f"the engine's answer is over {limit} bytes")
        parts, size = [], 0
        async for chunk in self.iter_chunks():
            size += len(chunk)
            if size > limit:
                self.close()
                raise UpstreamError(f"the engine's answer is over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked encoding removed); the connection goes back to the
        pool once the body was read to its end, and is closed on any error."""
        conn, frame = self._conn, self._framing
        try:
            if frame.length is not None:
                remaining = frame.length
                while remaining:
                    data = await conn.read_upto(remaining)
                    remaining -= len(data)
                    yield data
            elif frame.chunked:
                decoder = ChunkDecoder()
                while True:
                    data = decoder.feed(conn.buffer)
                    conn.consumed()
                    if data:
                        yield data
                    if decoder.finished:
                        break
                    if not data:
                        await conn.more()
            else:
                while data := await conn.read_some():
                    yield data
        except UpstreamError:
            self.close()
            raise
        self.done = True
        if frame.keep_alive and not conn.closed and not conn.buffer:
            self._pool.put_back(self._key, conn)
        else:
            conn.close()

    def close(self) -> None:
        """Give up on the rest of the body: the connection is closed (the engine sees it)."""
        if not self.done:
            self.done = True
            self._conn.close()


class Pool:
    def __init__(self, tls: Callable[[], ssl.SSLContext] = ssl.create_default_context) -> None:
        self._idle: dict[str, list[_Connection]] = {}
        self._waiting: set[_Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._make_tls = tls
        self._tls: ssl.SSLContext | None = None
        """made at the first https connection: a gateway of local engines never loads CAs"""

    def put_back(self, key: str, conn: _Connection) -> None:
        self._idle.setdefault(key, []).append(conn)

    async def _connect(self, host: str, port: int, tls: bool) -> _Connection:
        loop = asyncio.get_running_loop()
        make = lambda: _Connection(self._waiting)  # noqa: E731
        try:
            if tls:
                if self._tls is None:
                    self._tls = self._make_tls()
                connecting = loop.create_connection(
                    make, host, port, ssl=self._tls, server_hostname=host
                )
            else:
                connecting = loop.create_connection(make, host, port)
            # ssl.SSLError (a certificate that does not verify) is an OSError
            _, conn = await asyncio.wait_for(connecting, CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect: {exc}") from exc
        return conn

    async def post(
        self,
        base: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        idle_timeout_s: float | None = None,
    ) -> Response:
        """POST and read the answer's head. A kept-alive connection that turns out closed is
        replaced once by a new one (the engine may have dropped it while idle). `idle_timeout_s`
        bounds every wait for the engine's next byte (None: DEFAULT_IDLE_TIMEOUT_S)."""
        parts = urlsplit(base)
        tls = parts.scheme == "https"
        host, port = parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80)
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        timeout = DEFAULT_IDLE_TIMEOUT_S if idle_timeout_s is None else idle_timeout_s
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())
        idle = self._idle.get(base)
        while idle:
            conn = idle.pop()
            if conn.closed or conn.buffer:  # gone, or bytes nobody asked for: not to be trusted
                conn.close()
                continue
            conn.idle_timeout_s = timeout
            received = conn.received
            try:
                return await self._exchange(base, conn, request)
            except UpstreamError:
                if conn.received != received or conn.timed_out:
                    raise  # the engine answered (badly) or hangs: not a stale connection
        conn = await self._connect(host, port, tls)
        conn.idle_timeout_s = timeout
        return await self._exchange(base, conn, request)

    async def _exchange(self, key: str, conn: _Connection, request: bytes) -> Response:
        try:
            conn.send(request)
            for _ in range(MAX_INTERIM_HEADS + 1):
                head = parse_head(await conn.read_head())
                if head.status >= 200:
                    return Response(self, key, conn, head)
                if head.status == 101:
                    raise UpstreamError("the engine switched protocols unasked")
            raise UpstreamError("the engine sent only interim (1xx) answers")
        except BaseException:
            conn.close()  # broken, or cancelled (the client left): the engine sees it go
            raise

    async def _sweep(self) -> None:
        """End the waits that outlived their idle timeout (until the pool is closed)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_S)
            now = loop.time()
            for conn in list(self._waiting):
                if now - conn.waiting_since >= conn.idle_timeout_s:
                    conn.idle_expired()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

"""The gateway's upstream client on connections that fail (issue 18: "failover sometimes answers
500"): under load, uvloop's transport.write raised RuntimeError("handler is closed") on a
connection the engine had just reset, and only UpstreamError turned into a failover."""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import threading
import time

import uvloop

from reconciler.gateway.upstream import Pool, UpstreamError


def resetting_engine() -> socket.socket:
    """A listening socket whose every connection is reset (RST) as soon as it is accepted: an
    engine that is being killed."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(512)

    def reset_all() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed by the test
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    threading.Thread(target=reset_all, daemon=True).start()
    return server


def test_a_connection_reset_before_the_request_is_sent_is_an_upstream_error() -> None:
    """Other tasks on the loop (a gateway under load) let the reset arrive between connecting and
    writing; before the fix most of these 300 requests raised RuntimeError (a 500)."""
    server = resetting_engine()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    outcomes: collections.Counter[str] = collections.Counter()

    async def load(stop: list[bool]) -> None:
        while not stop:
            time.sleep(0.0002)  # a request's worth of work, holding the loop
            await asyncio.sleep(0)

    async def one(pool: Pool) -> None:
        try:
            await pool.post(url, "/v1/chat/completions", b"{}", {})
            outcomes["answered"] += 1
        except UpstreamError:
            outcomes["UpstreamError"] += 1
        except Exception as exc:  # what the gateway would have answered 500 for
            outcomes[repr(exc)[:80]] += 1

    async def main() -> None:
        pool, stop = Pool(), []
        others = [asyncio.ensure_future(load(stop)) for _ in range(20)]
        await asyncio.gather(*(one(pool) for _ in range(300)))
        stop.append(True)
        await asyncio.gather(*others)
        pool.close()

    try:
        uvloop.run(main())
    finally:
        server.close()
    assert outcomes == {"UpstreamError": 300}

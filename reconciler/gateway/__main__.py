"""`python -m reconciler.gateway --listen HOST:PORT --routes FILE`: the gateway process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from reconciler.gateway.server import Gateway


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.gateway")
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT")
    parser.add_argument("--routes", required=True, type=Path, help="the daemon's routes.json")
    parser.add_argument("--poll-interval", type=float, default=0.1, help="seconds between stats")
    parser.add_argument(
        "--require-keys", action="store_true", help="refuse every request until keys are set"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s gateway: %(message)s")
    with contextlib.suppress(ImportError):
        import uvloop  # the event loop is most of a proxy's cost per request

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    host, port = parse_listen(args.listen)
    gateway = Gateway(args.routes, poll_s=args.poll_interval, require_keys=args.require_keys)
    asyncio.run(serve(gateway, host, port))
    return 0


async def serve(gateway: Gateway, host: str, port: int) -> None:
    # handler_cancellation: a client that hangs up cancels its handler, which cuts the upstream
    runner = web.AppRunner(
        gateway.app(), handler_cancellation=True, access_log=None, shutdown_timeout=5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    print(f"gateway listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())

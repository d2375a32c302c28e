"""`python -m reconciler.gateway --listen HOST:PORT --routes FILE`: the gateway process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
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
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this process (the daemon) is gone"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s gateway: %(message)s")
    with contextlib.suppress(ImportError):
        import uvloop  # the event loop is most of a proxy's cost per request

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    host, port = parse_listen(args.listen)
    gateway = Gateway(args.routes, poll_s=args.poll_interval, require_keys=args.require_keys)
    asyncio.run(serve(gateway, host, port, args.parent_pid))
    return 0


async def serve(gateway: Gateway, host: str, port: int, parent_pid: int | None = None) -> None:
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
    if parent_pid is not None:
        watcher = asyncio.create_task(_exit_with_parent(parent_pid, stop))
    await stop.wait()
    if parent_pid is not None:
        watcher.cancel()
    await runner.cleanup()


async def _exit_with_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """A daemon killed with SIGKILL cannot stop its gateway: the gateway notices that it was
    re-parented and stops by itself, so no orphan keeps the port from the next daemon."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(0.5)
    stop.set()


if __name__ == "__main__":
    sys.exit(main())

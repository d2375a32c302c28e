"""`python -m reconciler.gateway --listen HOST:PORT --routes FILE`: the gateway process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.handlers
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from reconciler.gateway.clients import (
    HEAD_TIMEOUT_S,
    connection_limit,
    raise_open_files_limit,
)
from reconciler.gateway.discovery import ServiceGateway, uses_services
from reconciler.gateway.server import Gateway

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
LOG_FORMAT = "%(asctime)s %(levelname)s gateway: %(message)s"


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
    parser.add_argument(
        "--log-file", type=Path, default=None, help="log here, rotated by size (else stderr)"
    )
    parser.add_argument("--log-max-bytes", type=int, default=LOG_MAX_BYTES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup_logging(args.log_file, args.log_max_bytes)
    with contextlib.suppress(ImportError):
        import uvloop  # the event loop is most of a proxy's cost per request

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    host, port = parse_listen(args.listen)
    # a rendered (Kubernetes) table names Services: they are resolved into instances
    kind = ServiceGateway if uses_services(args.routes) else Gateway
    gateway = kind(
        args.routes, poll_s=args.poll_interval, require_keys=args.require_keys, listen_host=host
    )
    asyncio.run(serve(gateway, host, port, args.parent_pid))
    return 0


async def serve(gateway: Gateway, host: str, port: int, parent_pid: int | None = None) -> None:
    # handler_cancellation: a client that hangs up cancels its handler, which cuts the upstream;
    # keepalive_timeout runs from the connection's start: it bounds the wait for a request head
    runner = web.AppRunner(
        gateway.app(),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=5,
        keepalive_timeout=HEAD_TIMEOUT_S,
    )
    await runner.setup()
    assert runner.server is not None
    connections = gateway.connections  # the app's middleware marks its busy ones
    connections.limit = connection_limit(raise_open_files_limit())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        connections.factory(runner.server), host, port, backlog=2048, reuse_address=True
    )
    print(f"gateway listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if parent_pid is not None:
        watcher = asyncio.create_task(_exit_with_parent(parent_pid, stop))
    await stop.wait()
    if parent_pid is not None:
        watcher.cancel()
    server.close()
    await runner.cleanup()


class OneLine(logging.Filter):
    """A client's malformed request is the client's problem: aiohttp's "Error handling
    request" keeps one line naming the error, not a traceback per request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {str(exc)[:200]!r}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def setup_logging(log_file: Path | None, max_bytes: int = LOG_MAX_BYTES) -> None:
    os.umask(0o077)  # its logs are the state directory's: private, as the daemon makes them
    if log_file is None:
        handler: logging.Handler = logging.StreamHandler()
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(OneLine())
    logging.basicConfig(level=logging.INFO, handlers=[handler])


async def _exit_with_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """A daemon killed with SIGKILL cannot stop its gateway: the gateway notices that it was
    re-parented and stops by itself, so no orphan keeps the port from the next daemon."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(0.5)
    stop.set()


if __name__ == "__main__":
    sys.exit(main())

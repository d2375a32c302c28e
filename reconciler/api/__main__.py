"""`python -m reconciler.api`: the API process that `reconciler run` starts beside its loop.

Not a command for people: the daemon starts it with the end of a socket pair (--control-fd)
and restarts it if it dies. It exits when the daemon is gone. Secrets come from the
environment (RECONCILER_API_TOKEN, RECONCILER_WEBHOOK_SECRET), never from argv.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn

from reconciler.api.api_service import DaemonLink, split_listen

from .app import create_app
from .views import ApiSettings, DaemonFiles, Views

PARENT_POLL_S = 0.5
NICE = 10
"""The API process yields the CPU to the loop and the engines when a host is short of it: a
burst of reads waits a little; a reconcile pass (a restart, a preemption) does not."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.api")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--desired-dir", required=True, type=Path)
    parser.add_argument("--branch", default="main")
    parser.add_argument("--gateway-url", default=None)
    parser.add_argument("--run-id", default=None, help="the daemon run whose bulletin counts")
    parser.add_argument("--control-fd", type=int, default=None, help="the daemon's socket pair")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when it is gone")
    args = parser.parse_args(argv)
    os.nice(NICE)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s api: %(message)s")
    link = None
    if args.control_fd is not None:
        link = DaemonLink(socket.socket(fileno=args.control_fd))
    settings = ApiSettings(
        api_token=os.environ.get("RECONCILER_API_TOKEN") or None,
        webhook_secret=os.environ.get("RECONCILER_WEBHOOK_SECRET") or None,
        branch=args.branch,
        gateway_url=args.gateway_url,
    )
    host, port = split_listen(args.listen)
    server: uvicorn.Server | None = None

    def stopping() -> bool:
        return server is not None and server.should_exit

    files = DaemonFiles(args.state_dir, args.desired_dir, args.run_id)
    app = create_app(Views(files, settings, link, stopping))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if args.parent_pid is not None:
        threading.Thread(
            target=_exit_with_parent, args=(args.parent_pid, server), daemon=True
        ).start()
    server.run()  # SIGTERM (the daemon stopping it) ends it gracefully
    return 0 if server.started else 1


def _exit_with_parent(parent_pid: int, server: uvicorn.Server) -> None:
    """A daemon killed with SIGKILL cannot stop its API: the API notices that it was
    re-parented and stops by itself, so no orphan keeps the port from the next daemon."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    server.should_exit = True


if __name__ == "__main__":
    sys.exit(main())

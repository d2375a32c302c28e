"""The HTTP API as a service of the daemon: uvicorn serving the application in a thread."""

from __future__ import annotations

import threading

import uvicorn
from fastapi import FastAPI

STOP_TIMEOUT_S = 5.0


def split_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:8080` -> (127.0.0.1, 8080); `[::1]:8080` -> (::1, 8080)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class ApiServer:
    """Serves `app` on `listen` from start() to stop() (the daemon's Service protocol)."""

    def __init__(self, app: FastAPI, listen: str) -> None:
        self.listen = listen
        host, port = split_listen(listen)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        # uvicorn must not take over SIGTERM/SIGINT: the daemon owns them
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)

"""The control link between the API process and its daemon: one socket pair, JSON lines.

The API process answers reads from files (the state file, the bulletin, the event log); it asks
the daemon only for what exists nowhere else: the metrics registry, and actions (run a pass,
restart a model, a pushed webhook). Each ask is one line out and one line back. The API
process bounds how often it asks (metrics at most once a second, actions only for authorised
requests), so traffic cannot turn into loop work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from reconciler.core.events import EventKind
from reconciler.loop.daemon import Daemon
from reconciler.metrics import render

log = logging.getLogger("reconciler.api")

CALL_TIMEOUT_S = 10.0
MAX_LINE = 1 << 16
"""a request line longer than this is not one the API process writes"""


class LinkError(Exception):
    """The daemon did not answer (it is stopping, or gone)."""


class DaemonLink:
    """The API process's end: `call(op, **args)` -> the daemon's answer."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(CALL_TIMEOUT_S)
        self._sock = sock
        self._file = sock.makefile("rwb")
        self._lock = threading.Lock()  # one question at a time: answers come back in order

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        line = json.dumps({"op": op, **args}).encode() + b"\n"
        with self._lock:
            try:
                self._file.write(line)
                self._file.flush()
                answer = self._file.readline()
            except OSError as exc:
                raise LinkError(f"the daemon does not answer: {exc}") from exc
        if not answer:
            raise LinkError("the daemon closed the link")
        reply = json.loads(answer)
        if not reply.get("ok"):
            raise LinkError(str(reply.get("error", "refused")))
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()


class ControlServer:
    """The daemon's end: answers one API process's questions in a thread of its own."""

    def __init__(self, daemon: Daemon, sock: socket.socket) -> None:
        self.daemon = daemon
        self._sock = sock
        self._ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "metrics": self._metrics,
            "reconcile": self._reconcile,
            "restart": self._restart,
            "webhook": self._webhook,
        }
        self._thread = threading.Thread(target=self._serve, name="api-link", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()

    def _serve(self) -> None:
        with contextlib.suppress(OSError), self._sock.makefile("rwb") as stream:
            while True:
                line = stream.readline(MAX_LINE)
                if not line:
                    return  # the API process is gone; the service starts another
                stream.write(json.dumps(self.answer(line)).encode() + b"\n")
                stream.flush()

    def answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            handler = self._ops[request["op"]]
            return {"ok": True, **handler(request)}
        except Exception as exc:  # a bad question is answered, never a reason to stop
            log.warning("API link: %s", exc)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def _metrics(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {"body": render(self.daemon.registry).decode()}

    def _reconcile(self, request: dict[str, Any]) -> dict[str, Any]:
        self.daemon.controller.trigger(str(request.get("reason", "api")))
        return {}

    def _restart(self, request: dict[str, Any]) -> dict[str, Any]:
        model_id = str(request["model"])
        self.daemon.reconciler.request_restart(model_id)  # refuses what is not a model id
        self.daemon.controller.trigger(f"restart {model_id} (api)")
        return {}

    def _webhook(self, request: dict[str, Any]) -> dict[str, Any]:
        with contextlib.suppress(Exception):  # the record is for operators; it must not fail
            self.daemon.reconciler.event(EventKind.webhook, None, str(request.get("detail", "")))
        self.daemon.controller.fetch_now("webhook")
        return {}

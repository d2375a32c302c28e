"""ApiService: how the daemon owns the API process (start, watch, restart, stop), and the control
link between them: one socket pair, JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from reconciler.core.events import EventKind
from reconciler.loop.daemon import Daemon, terminate
from reconciler.metrics import render
from reconciler.state.directory import open_append, private_dir

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

    def call(self, op: str, **args: str) -> dict[str, Any]:
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
        self._ops: dict[str, Callable[[dict[str, object]], dict[str, object]]] = {
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

    def answer(self, line: bytes) -> dict[str, object]:
        try:
            request = json.loads(line)
            handler = self._ops[request["op"]]
            return {"ok": True, **handler(request)}
        except Exception as exc:  # a bad question is answered, never a reason to stop
            log.warning("API link: %s", exc)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def _metrics(self, _request: dict[str, object]) -> dict[str, object]:
        return {"body": render(self.daemon.registry).decode()}

    def _reconcile(self, request: dict[str, object]) -> dict[str, object]:
        self.daemon.controller.trigger(str(request.get("reason", "api")))
        return {}

    def _restart(self, request: dict[str, object]) -> dict[str, object]:
        model_id = str(request["model"])
        self.daemon.reconciler.request_restart(model_id)  # refuses what is not a model id
        self.daemon.controller.trigger(f"restart {model_id} (api)")
        return {}

    def _webhook(self, request: dict[str, object]) -> dict[str, object]:
        with contextlib.suppress(Exception):  # the record is for operators; it must not fail
            self.daemon.reconciler.event(EventKind.webhook, None, str(request.get("detail", "")))
        self.daemon.controller.fetch_now("webhook")
        return {}


START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
RESTART_DELAY_S = (0.5, 30.0)
"""a dead API process is started again after the first delay, doubling up to the second while
it keeps dying young (a port taken by someone else must not spin a CPU)"""
YOUNG_S = 10.0


class ApiError(Exception):
    """The API process did not start or does not answer."""


def split_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:8080` -> (127.0.0.1, 8080); `[::1]:8080` -> (::1, 8080)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def local_url(listen: str) -> str:
    """Where this host reaches an API listening on `listen` (a wildcard address via loopback)."""
    host, port = split_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ApiService:
    """Serves the API of `daemon` on `listen` from start() to stop() (the daemon's Service)."""

    def __init__(
        self,
        daemon: Daemon,
        listen: str,
        *,
        desired_dir: Path,
        branch: str = "main",
        gateway_url: str | None = None,
        python: str | None = None,
    ) -> None:
        self.daemon = daemon
        self.listen = listen
        self.state_dir = daemon.options.state_dir
        self.desired_dir = desired_dir
        self.branch = branch
        self.gateway_url = gateway_url
        self.python = python or sys.executable
        self.log_path = self.state_dir / "logs" / "api.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._control: ControlServer | None = None
        self._log: IO[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def command(self, control_fd: int) -> list[str]:
        return [
            self.python,
            "-m",
            "reconciler.api",
            "--listen",
            self.listen,
            "--state-dir",
            str(self.state_dir),
            "--desired-dir",
            str(self.desired_dir),
            "--branch",
            self.branch,
            *(["--gateway-url", self.gateway_url] if self.gateway_url else []),
            "--run-id",
            self.daemon.run_id,
            "--control-fd",
            str(control_fd),
            "--parent-pid",
            str(os.getpid()),
        ]

    def start(self) -> None:
        """Start the process and return once it answers; ApiError if it does not."""
        self._spawn()
        self._wait_answering(START_TIMEOUT_S)
        self._watcher = threading.Thread(target=self._watch, name="api-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stopping.set()
        process, self.process = self.process, None
        terminate(process, STOP_TIMEOUT_S)
        self._close()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        private_dir(self.log_path.parent)
        self._log = os.fdopen(open_append(self.log_path), "ab")  # held for the process's life
        try:
            self.process = subprocess.Popen(
                self.command(theirs.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # a Ctrl-C on the daemon's terminal reaches the daemon
            )
        finally:
            theirs.close()
        self._control = ControlServer(self.daemon, ours)
        self._control.start()

    def _wait_answering(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        health = f"{local_url(self.listen)}/healthz"
        while time.monotonic() < deadline:
            process = self.process
            if process is None or process.poll() is not None:
                code = process.returncode if process is not None else None
                raise ApiError(f"the API exited with status {code} (see {self.log_path})")
            try:
                with urllib.request.urlopen(health, timeout=1.0):
                    return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        raise ApiError(f"the API did not answer on {health} within {timeout_s:g} s")

    def _watch(self) -> None:
        """Start the API again whenever it dies, until stop()."""
        delay = RESTART_DELAY_S[0]
        while not self._stopping.is_set():
            process = self.process
            if process is None:
                return
            began = time.monotonic()
            process.wait()
            if self._stopping.is_set():
                return
            lived = time.monotonic() - began
            delay = RESTART_DELAY_S[0] if lived > YOUNG_S else min(delay * 2, RESTART_DELAY_S[1])
            log.warning("the API process exited (%s); starting it again", process.returncode)
            self._close()
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            try:
                self._spawn()
            except OSError:
                log.exception("cannot start the API process")
                return

    def _close(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._log is not None:
            self._log.close()
            self._log = None

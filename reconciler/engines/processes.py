"""Operating-system processes: our children's exit codes, signalling a process group, waiting.

Children started by this Python process are shared by every supervisor in it: the OS keeps one
list of children per process, and only the parent can collect an exit code (and must, or the
child stays a zombie). Exit codes are kept by (pid, create_time) once collected.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

import psutil

from reconciler.engines.base import EngineError

POLL_S = 0.05


@dataclass(frozen=True)
class _Child:
    popen: subprocess.Popen[bytes]
    create_time: float


_children: dict[int, _Child] = {}
_exit_codes: dict[tuple[int, float], int] = {}
_children_lock = threading.Lock()


def register_child(popen: subprocess.Popen[bytes], create_time: float) -> None:
    with _children_lock:
        _children[popen.pid] = _Child(popen, create_time)


def reap(pid: int, create_time: float | None = None) -> int | None:
    """Collect our child `pid` if it has exited; its exit code (negative: killed by that
    signal), or None while it runs or when it was not started by this process."""
    with _children_lock:
        child = _children.get(pid)
        if child is not None and (create_time is None or same_time(child.create_time, create_time)):
            code = child.popen.poll()
            if code is None:
                return None
            del _children[pid]
            _exit_codes[(pid, child.create_time)] = code
            return code
        if create_time is None:
            return None
        for (known_pid, known_time), code in _exit_codes.items():
            if known_pid == pid and same_time(known_time, create_time):
                return code
        return None


def forget_exit_code(pid: int, create_time: float) -> None:
    with _children_lock:
        for key in [k for k in _exit_codes if k[0] == pid and same_time(k[1], create_time)]:
            del _exit_codes[key]


def child_running(pid: int) -> bool:
    """True while `pid` is a child we started and have not reaped yet (reaping it if done)."""
    with _children_lock:
        known = pid in _children
    return known and reap(pid) is None


def reap_all() -> None:
    """Poll every child we started, so that none stays a zombie between observe passes."""
    with _children_lock:
        pids = list(_children)
    for pid in pids:
        reap(pid)


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port (or on the wildcard address).

    SO_REUSEADDR as the engines' servers use it: a port left in TIME_WAIT by an engine that
    was just stopped is free, a listening socket is not.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise EngineError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return False


def find_executable(name: str, path: str | None = None) -> str | None:
    """The file `name` runs as (PATH lookup unless it contains a slash), or None."""
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name, path=path)


def same_time(a: float, b: float | None) -> bool:
    # psutil derives create_time from boot time + clock ticks: stable for one process, but
    # allow for float noise through JSON and across psutil versions
    return b is not None and abs(a - b) < 0.01


def is_alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return same_time(proc.create_time(), create_time) and not exited(proc)
    except psutil.NoSuchProcess:
        return False


def signal_group(group: int | None, members: list[psutil.Process], sig: signal.Signals) -> None:
    if group is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
        return
    for member in members:  # the engine left its group: signal what we know of it
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(sig)


def wait_gone(pid: int, group: int | None, members: list[psutil.Process], timeout: float) -> bool:
    """Wait until the engine, its known children and its process group are gone."""
    deadline = time.monotonic() + timeout
    pause = 0.002  # most engines exit at once: look again soon, then back off to POLL_S
    while True:
        if (
            not child_running(pid)
            and all(exited(m) for m in members)
            and not _group_has_live_members(group)
        ):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, POLL_S)


def exited(proc: psutil.Process) -> bool:
    """Gone, or a zombie whose threads have all exited (only the reaping is left).

    A multi-threaded process shows as a zombie as soon as its main thread is done, while its
    other threads still run and hold its sockets: that is not exited yet.
    """
    try:
        if not proc.is_running():
            return True
        return proc.status() == psutil.STATUS_ZOMBIE and proc.num_threads() <= 1
    except psutil.NoSuchProcess:
        return True


def _group_has_live_members(group: int | None) -> bool:
    if group is None:
        return False
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # the group still exists; it may hold only zombies that init has not collected yet
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == group and not exited(proc):
                return True
        except ProcessLookupError:
            continue
    return False

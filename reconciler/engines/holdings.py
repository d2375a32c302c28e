"""What an engine really holds, seen from outside: the sockets it listens on and the memory it uses.

Sockets: the TCP sockets its process tree holds in LISTEN state. A spec cannot choose where an
engine listens, yet engines read settings from many places (their environment, their own config
files, flags hidden in values). Rather than list every way to move the address, the reconciler
looks at the result: any listening socket of the engine's process or of its children other than
the assigned address and port is a violation, whatever caused it.

Memory: its process tree's GPU memory (NVML) or, on declared GPUs, its resident memory standing
in for it (a CPU engine's weights and KV cache live there).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from reconciler.core.schedule.values import MIB
from reconciler.gpus import InventoryError, process_memory_mb

log = logging.getLogger(__name__)


# ---- sockets ----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Listener:
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def listeners(pid: int, create_time: float | None = None) -> set[Listener] | None:
    """The TCP listening sockets of `pid` and all its descendants; None when the process is gone
    (or is another process by now: `create_time` differs) or cannot be inspected."""
    try:
        root = psutil.Process(pid)
        if create_time is not None and abs(root.create_time() - create_time) >= 0.05:
            return None
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    found: set[Listener] = set()
    for proc in tree:
        try:
            connections = proc.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue  # a child that just exited listens nowhere
        except psutil.Error as exc:  # AccessDenied: not ours to judge, and not a violation
            log.debug("cannot list the sockets of pid %s: %s", proc.pid, exc)
            return None
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                found.add(Listener(conn.laddr.ip, conn.laddr.port))
    return found


def violation(found: Iterable[Listener], host: str, port: int) -> str | None:
    """Why these sockets break the rule "listen on host:port and nowhere else"; None if they
    do not. A wildcard assignment (0.0.0.0, ::) admits any address on the assigned port."""
    expected = Listener(host, port)
    wrong = sorted(s for s in set(found) if not _allowed(s, host, port))
    if not wrong:
        return None
    places = ", ".join(str(s) for s in wrong)
    return f"listening on {places}, expected {expected}"


def listen_violation(
    pid: int | None, create_time: float | None, host: str, port: int
) -> str | None:
    """The violation of a running engine process, or None (also when it cannot be seen)."""
    if pid is None:
        return None  # a container: its sockets live in another network namespace
    found = listeners(pid, create_time)
    return None if found is None else violation(found, host, port)


def _allowed(socket: Listener, host: str, port: int) -> bool:
    if socket.port != port:
        return False
    if socket.address == host or _is_wildcard(host):
        return True
    if host == "localhost" and socket.address in ("127.0.0.1", "::1"):
        return True
    try:  # an IPv4 address seen through an IPv6 socket (::ffff:127.0.0.1)
        mapped = ipaddress.ip_address(socket.address)
        return isinstance(mapped, ipaddress.IPv6Address) and str(mapped.ipv4_mapped) == host
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


# ---- memory -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    mb: int
    """MiB per GPU: the largest of the engine's GPUs (reservations are per GPU)"""
    measured_by: str
    """"nvml" or "rss" """


def tree_pids(pid: int) -> list[int]:
    """The engine's process and all its descendants (vLLM's workers are children)."""
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return []


def measure(pid: int, *, declared_gpus: bool) -> Usage | None:
    """The engine's memory now, or None when it is gone or NVML shows none of its processes."""
    pids = tree_pids(pid)
    if not pids:
        return None
    if declared_gpus:
        return _resident(pids)
    try:
        per_gpu = process_memory_mb(pids)
    except InventoryError:
        return None
    return Usage(max(per_gpu.values()), "nvml") if per_gpu else None


def _resident(pids: list[int]) -> Usage | None:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return Usage(round(total / MIB), "rss") if total else None

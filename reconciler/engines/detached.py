"""Detached engine processes: start them, find them again, stop them, read their logs.

Engines outlive the reconciler, so nothing here depends on the reconciler's memory:

- Identity lives in the process itself (markers in its environment, see identity.py); a handle
  carries pid + create_time, so a pid the kernel recycled for another process is never
  mistaken for an engine, and never signalled.
- Each engine runs in its own session and process group (start_new_session=True): it survives
  the reconciler's terminal or service going away, and stop() signals the whole group, so the
  helper processes an engine spawns (vLLM's workers) go with it.
- The record of an engine (identity.py) reports a dead engine (alive=False, with its exit code
  when this reconciler process was its parent). stop() removes the record, so a stopped engine
  disappears from observe() while a crashed one stays visible until restarted.
- stdout and stderr go to <state_dir>/logs/<id>.log, opened O_APPEND by the engine itself. The
  engine writes to that file descriptor directly, so rotation cannot reopen it: at start a log
  over the size limit is rotated by renaming (<id>.log.1 .. .N); while the engine runs, an
  oversized log is rotated by copy-and-truncate (O_APPEND makes the engine's next write land at
  the new end; lines written between the copy and the truncation are lost, the usual
  copytruncate trade-off).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from reconciler.engines import processes as procs
from reconciler.engines.base import MARKER_NAMESPACE, Command, EngineError, Handle
from reconciler.engines.identity import EngineRecord, RecordStore, identity_from_env, inherited_env
from reconciler.state.directory import namespace_for, open_append, private_dir

log = logging.getLogger(__name__)

KILL_WAIT_S = 5.0
"""How long to wait for the group to vanish after SIGKILL (the kernel needs a moment)."""
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
SECRET_FLAGS = frozenset({"--api-key", "--api_key", "--admin-api-key"})


def default_namespace(state_dir: str | os.PathLike[str]) -> str:
    """A namespace per state directory: reconcilers with different state dirs never adopt,
    stop or report each other's engines. The reconciler's own (state.paths.namespace_for), so
    that an engine made anywhere (the API's, a bench's) sees what the loop's engines see."""
    return namespace_for(Path(state_dir).expanduser())


@dataclass(frozen=True)
class _Running:
    identity: Handle
    ppid: int


class ProcessSupervisor:
    """Starts, finds and stops the engine processes of one reconciler namespace."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        namespace: str | None = None,
        *,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_backups: int = LOG_BACKUPS,
    ) -> None:
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.namespace = namespace or default_namespace(self.state_dir)
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.logs_dir = self.state_dir / "logs"
        self.records_dir = self.state_dir / "engines"
        self.records = RecordStore(self.records_dir, self.namespace)

    def log_path(self, model_id: str) -> Path:
        return self.logs_dir / f"{model_id}.log"

    # ---- start -------------------------------------------------------------------------------

    def launch(self, command: Command, *, host: str = "127.0.0.1") -> Handle:
        """Start `command` detached. Its env must carry the markers (see records.engine_env)."""
        identity = identity_from_env(command.env, self.namespace)
        if identity is None:
            raise ValueError("command.env lacks this namespace's engine markers")
        self._refuse_duplicate(identity.model_id)
        if procs.port_in_use(host, identity.port):
            raise EngineError(f"port {identity.port} is already in use")
        # a short allow list of the host's variables, then the spec's env and our values: never
        # the daemon's secrets (identity.py)
        env = inherited_env(os.environ, command.unset_env) | command.env
        if not command.argv or procs.find_executable(command.argv[0], env.get("PATH")) is None:
            name = command.argv[0] if command.argv else "(empty argv)"
            raise EngineError(f"executable not found: {name}")
        log_path = self.log_path(identity.model_id)
        started_at = time.time()
        popen = self._spawn(command.argv, env, log_path, identity, started_at)
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = started_at  # exited at once; still recorded so the exit is reported
        procs.register_child(popen, create_time)
        handle = dataclasses.replace(
            identity,
            started_at=started_at,
            pid=popen.pid,
            create_time=create_time,
            log_path=str(log_path),
        )
        self.records.write(EngineRecord(self.namespace, tuple(command.argv), handle))
        return handle

    def _refuse_duplicate(self, model_id: str) -> None:
        """Nothing is ever started twice: a live engine of the same model must be stopped first."""
        record = self.records.read(model_id)
        if record is None:
            return
        old = record.handle
        if (
            old.pid is not None
            and old.create_time is not None
            and procs.is_alive(old.pid, old.create_time)
        ):
            raise EngineError(f"{model_id} is already running (pid {old.pid})")

    def _spawn(
        self,
        argv: tuple[str, ...],
        env: dict[str, str],
        log_path: Path,
        identity: Handle,
        started_at: float,
    ) -> subprocess.Popen[bytes]:
        private_dir(self.logs_dir)
        self._rotate(log_path, rotate_by_rename)
        fd = open_append(log_path)
        try:
            stamp = datetime.fromtimestamp(started_at, UTC).isoformat(timespec="seconds")
            # one line, whatever the argv holds: quoted as a shell would, newlines escaped
            shown = shlex.join(masked_argv(argv)).replace("\n", "\\n")
            header = (
                f"--- {stamp} reconciler: starting {identity.model_id} "
                f"(spec {identity.spec_hash}): {shown}\n"
            )
            os.write(fd, header.encode())
            return subprocess.Popen(
                list(argv),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd=self.state_dir,
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
            raise EngineError(f"cannot start {argv[0]}: {exc}") from exc
        finally:
            os.close(fd)

    def _rotate(self, path: Path, rotate: Callable[[Path, int], None]) -> None:
        try:
            if path.stat().st_size >= self.log_max_bytes:
                rotate(path, self.log_backups)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot rotate %s: %s", path, exc)

    # ---- observe -----------------------------------------------------------------------------

    def observe(self, framework: str | None = None) -> list[Handle]:
        """Every engine of this namespace (of `framework`, if given): running ones found in the
        process table, plus dead ones that still have a record (alive=False)."""
        procs.reap_all()
        running = self._scan()
        records = self.records.all()
        handles: list[Handle] = []
        for proc in running:
            if framework is not None and proc.identity.framework != framework:
                continue
            handles.append(self._running_handle(proc.identity, records.get(proc.identity.model_id)))
            self._rotate(self.log_path(proc.identity.model_id), rotate_by_copy_truncate)
        alive_keys = {(p.identity.pid, p.identity.create_time) for p in running}
        for record in records.values():
            if framework is not None and record.handle.framework != framework:
                continue
            if (record.handle.pid, record.handle.create_time) not in alive_keys:
                handles.append(self._dead_handle(record))
        handles.sort(key=lambda h: (h.model_id, not h.alive, h.pid or 0))
        return handles

    def _scan(self) -> list[_Running]:
        """One pass over the process table; the engine processes of this namespace.

        A child of an engine inherits its markers (vLLM's workers do): only processes whose
        parent is not itself a marked process of the same model count as engines.
        """
        found: list[_Running] = []
        for proc in psutil.process_iter(["pid", "ppid", "create_time", "environ"]):
            env = proc.info["environ"]
            if not env or env.get(MARKER_NAMESPACE) != self.namespace:
                continue
            identity = identity_from_env(env, self.namespace)
            if identity is None or proc.info["create_time"] is None:
                continue
            identity = dataclasses.replace(
                identity, pid=proc.info["pid"], create_time=proc.info["create_time"]
            )
            found.append(_Running(identity, proc.info["ppid"]))
        by_pid = {p.identity.pid: p for p in found}
        return [
            p
            for p in found
            if p.ppid not in by_pid or by_pid[p.ppid].identity.model_id != p.identity.model_id
        ]

    def _running_handle(self, identity: Handle, record: EngineRecord | None) -> Handle:
        assert identity.pid is not None and identity.create_time is not None
        matches = record is not None and _same_process(record, identity.pid, identity.create_time)
        started = record.handle.started_at if matches and record else identity.create_time
        log_path = str(self.log_path(identity.model_id))
        return dataclasses.replace(identity, started_at=started, log_path=log_path)

    def _dead_handle(self, record: EngineRecord) -> Handle:
        exit_code = record.handle.exit_code
        if exit_code is None and record.handle.pid is not None:
            exit_code = procs.reap(record.handle.pid, record.handle.create_time)
            if exit_code is not None:
                # remembered for the next reconciler process, which is not the parent
                self.records.write(record.with_exit_code(exit_code))
        return record.observed(alive=False, exit_code=exit_code)

    # ---- stop --------------------------------------------------------------------------------

    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        """SIGTERM the engine's process group, SIGKILL it after `grace_s`; reap our child.

        The process is signalled only if it is still the one the handle names (same pid and
        create_time, and our markers when readable). A dead engine's record is removed.
        """
        if handle.pid is not None and handle.create_time is not None:
            proc = self._verified(handle)
            if proc is not None:
                self._terminate(proc, grace_s)
            procs.reap(handle.pid, handle.create_time)
        self._forget(handle)

    def _verified(self, handle: Handle) -> psutil.Process | None:
        assert handle.pid is not None and handle.create_time is not None
        try:
            proc = psutil.Process(handle.pid)
            if not procs.same_time(proc.create_time(), handle.create_time):
                log.warning("pid %s is no longer %s: not signalled", handle.pid, handle.model_id)
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None  # already dead; only the reaping is left
            env = proc.environ()
        except psutil.NoSuchProcess:
            return None
        except psutil.AccessDenied:
            return proc  # create_time matched; environ is unreadable for other users
        identity = identity_from_env(env, self.namespace)
        if identity is None or identity.model_id != handle.model_id:
            log.warning("pid %s does not carry %s's markers: not signalled", proc.pid, handle)
            return None
        return proc

    def _terminate(self, proc: psutil.Process, grace_s: float) -> None:
        try:
            members = [proc, *proc.children(recursive=True)]
            # started with start_new_session: the engine leads its own group, unless it moved
            group = proc.pid if os.getpgid(proc.pid) == proc.pid else None
        except (psutil.NoSuchProcess, ProcessLookupError):
            return
        procs.signal_group(group, members, signal.SIGTERM)
        if procs.wait_gone(proc.pid, group, members, grace_s):
            return
        log.warning("pid %s ignored SIGTERM for %.1fs: SIGKILL", proc.pid, grace_s)
        procs.signal_group(group, members, signal.SIGKILL)
        if not procs.wait_gone(proc.pid, group, members, KILL_WAIT_S):
            raise EngineError(f"pid {proc.pid} survived SIGKILL")

    def _forget(self, handle: Handle) -> None:
        """Drop the record of an engine stopped on purpose (only if it names this process)."""
        record = self.records.read(handle.model_id)
        if record is None:
            return
        if handle.pid is None or _same_process(record, handle.pid, handle.create_time):
            self.records.remove(handle.model_id)
            if record.handle.pid is not None and record.handle.create_time is not None:
                procs.forget_exit_code(record.handle.pid, record.handle.create_time)

    # ---- logs --------------------------------------------------------------------------------

    def tail(self, handle: Handle, lines: int = 20) -> list[str]:
        path = Path(handle.log_path) if handle.log_path else self.log_path(handle.model_id)
        return tail_lines(path, lines)


def _same_process(record: EngineRecord, pid: int, create_time: float | None) -> bool:
    return (
        record.handle.pid == pid
        and create_time is not None
        and procs.same_time(create_time, record.handle.create_time)
    )


# ---- log files ------------------------------------------------------------------------------


def masked_argv(argv: tuple[str, ...] | list[str]) -> list[str]:
    """argv with secret values hidden, for log headers (the argv itself is never changed)."""
    out = list(argv)
    for i in range(1, len(out)):
        if out[i - 1] in SECRET_FLAGS:
            out[i] = "***"
    return out


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file, reading only as much of its end as needed."""
    if lines <= 0:
        return []
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            block = 8192
            data = b""
            while end > 0 and data.count(b"\n") <= lines:
                start = max(0, end - block)
                f.seek(start)
                data = f.read(end - start) + data
                end = start
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


def rotate_by_rename(path: Path, backups: int) -> None:
    """<path> -> <path>.1 -> ... -> <path>.<backups>; the oldest falls off."""
    _shift_backups(path, backups)
    if backups > 0:
        os.replace(path, _backup(path, 1))
    else:
        path.unlink(missing_ok=True)


def rotate_by_copy_truncate(path: Path, backups: int) -> None:
    """Rotate a log that a running process still writes to (through an O_APPEND fd)."""
    _shift_backups(path, backups)
    if backups > 0:
        shutil.copyfile(path, _backup(path, 1))
    with path.open("r+b") as f:
        f.truncate(0)


def _backup(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _shift_backups(path: Path, backups: int) -> None:
    _backup(path, backups).unlink(missing_ok=True)
    for n in range(backups - 1, 0, -1):
        if _backup(path, n).exists():
            os.replace(_backup(path, n), _backup(path, n + 1))

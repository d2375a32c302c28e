"""Detached engine processes: start them, find them again, stop them, read their logs.

Engines outlive the reconciler, so nothing here depends on the reconciler's memory:

- Identity lives in the process itself. Every engine is started with marker variables in its
  environment (model id, spec hash, namespace, GPUs, port, memory, framework). `observe()` scans
  the process table with psutil and keeps the processes whose namespace marker is ours, so a
  restarted reconciler adopts its engines with no file at all. A handle carries pid +
  create_time: a pid the kernel recycled for another process is never mistaken for an engine,
  and never signalled.
- Each engine runs in its own session and process group (start_new_session=True): it survives
  the reconciler's terminal or service going away, and stop() signals the whole group, so the
  helper processes an engine spawns (vLLM's workers) go with it.
- A small JSON record per engine (<state_dir>/engines/<id>.json, written atomically) remembers
  pid, create_time, argv and start time. It is needed only for engines that died: a dead
  process cannot be scanned, yet the planner must hear that it crashed (alive=False, with its
  exit code when this reconciler process was its parent). stop() removes the record, so a
  stopped engine disappears from observe() while a crashed one stays visible until restarted.
- stdout and stderr go to <state_dir>/logs/<id>.log, opened O_APPEND. The engine writes to that
  file descriptor directly, so rotation cannot reopen it: at start a log over the size limit is
  rotated by renaming (<id>.log.1 .. .N); while the engine runs, observe() rotates an oversized
  log by copy-and-truncate (O_APPEND makes the engine's next write land at the new end; lines
  written between the copy and the truncation are lost, the usual copytruncate trade-off).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from reconciler.core.spec import ModelSpec
from reconciler.engines.base import (
    MARKER_GPUS,
    MARKER_HASH,
    MARKER_MEMORY,
    MARKER_MODEL,
    MARKER_NAMESPACE,
    MARKER_PORT,
    Command,
    EngineError,
    EnginePlacement,
    Handle,
)

log = logging.getLogger(__name__)

MARKER_FRAMEWORK = "RECONCILER_FRAMEWORK"
"""Which engine class owns a process: llama_cpp and vllm engines share one namespace."""

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
KILL_WAIT_S = 5.0
"""How long to wait for the group to vanish after SIGKILL (the kernel needs a moment)."""
POLL_S = 0.05
SECRET_FLAGS = frozenset({"--api-key", "--api_key"})

# The daemon's own secrets never reach an engine: its log is served by the API.
DAEMON_SECRETS = frozenset({"RECONCILER_API_TOKEN", "RECONCILER_WEBHOOK_SECRET"})


def default_namespace(state_dir: str | os.PathLike[str]) -> str:
    """A namespace per state directory: reconcilers with different state dirs never adopt,
    stop or report each other's engines."""
    resolved = str(Path(state_dir).expanduser().resolve())
    return hashlib.sha256(resolved.encode()).hexdigest()[:12]


def engine_env(
    spec: ModelSpec, placement: EnginePlacement, framework: str, namespace: str
) -> dict[str, str]:
    """Pure: the variables an engine gets on top of the reconciler's own environment.

    spec.env first, then the placement's GPUs and the markers, so a spec can never hide an
    engine from its reconciler or escape its placement.
    """
    gpus = ",".join(str(g) for g in placement.gpus)
    return {
        **spec.env,
        "CUDA_VISIBLE_DEVICES": gpus,
        MARKER_MODEL: spec.id,
        MARKER_HASH: spec.spec_hash(),
        MARKER_NAMESPACE: namespace,
        MARKER_FRAMEWORK: framework,
        MARKER_GPUS: gpus,
        MARKER_PORT: str(placement.port),
        MARKER_MEMORY: str(placement.memory_mb),
    }


@dataclass(frozen=True)
class Identity:
    """What the markers say about an engine process."""

    model_id: str
    framework: str
    spec_hash: str
    port: int
    gpus: tuple[int, ...]
    memory_mb: int


def identity_from_env(env: Mapping[str, str], namespace: str) -> Identity | None:
    """The engine identity in a process environment, or None when it is not ours."""
    if env.get(MARKER_NAMESPACE) != namespace or not env.get(MARKER_MODEL):
        return None
    try:
        gpus_text = env.get(MARKER_GPUS, "")
        return Identity(
            model_id=env[MARKER_MODEL],
            framework=env.get(MARKER_FRAMEWORK, ""),
            spec_hash=env.get(MARKER_HASH, ""),
            port=int(env.get(MARKER_PORT, "0")),
            gpus=tuple(int(g) for g in gpus_text.split(",") if g),
            memory_mb=int(env.get(MARKER_MEMORY, "0")),
        )
    except ValueError:
        return None  # tampered markers: not an engine we can manage


@dataclass(frozen=True)
class EngineRecord:
    """<state_dir>/engines/<id>.json: how to report an engine once its process is gone."""

    namespace: str
    model_id: str
    framework: str
    spec_hash: str
    port: int
    gpus: tuple[int, ...]
    memory_mb: int
    pid: int
    create_time: float
    argv: tuple[str, ...]
    started_at: float
    log_path: str
    exit_code: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EngineRecord:
        data = json.loads(text)
        data["gpus"] = tuple(data["gpus"])
        data["argv"] = tuple(data["argv"])
        return cls(**data)

    def handle(self, *, alive: bool, exit_code: int | None = None) -> Handle:
        return Handle(
            model_id=self.model_id,
            framework=self.framework,
            spec_hash=self.spec_hash,
            port=self.port,
            gpus=self.gpus,
            memory_mb=self.memory_mb,
            started_at=self.started_at,
            pid=self.pid,
            create_time=self.create_time,
            alive=alive,
            exit_code=exit_code,
            log_path=self.log_path,
        )


# Children started by this Python process, shared by every supervisor in it: the OS keeps one
# list of children per process, and only the parent can collect an exit code (and must, or the
# child stays a zombie). Exit codes are kept by (pid, create_time) once collected.
@dataclass(frozen=True)
class _Child:
    popen: subprocess.Popen[bytes]
    create_time: float


_children: dict[int, _Child] = {}
_exit_codes: dict[tuple[int, float], int] = {}
_children_lock = threading.Lock()


def _register_child(popen: subprocess.Popen[bytes], create_time: float) -> None:
    with _children_lock:
        _children[popen.pid] = _Child(popen, create_time)


def _reap(pid: int, create_time: float | None = None) -> int | None:
    """Collect our child `pid` if it has exited; its exit code (negative: killed by that
    signal), or None while it runs or when it was not started by this process."""
    with _children_lock:
        child = _children.get(pid)
        if child is not None and (
            create_time is None or _same_time(child.create_time, create_time)
        ):
            code = child.popen.poll()
            if code is None:
                return None
            del _children[pid]
            _exit_codes[(pid, child.create_time)] = code
            return code
        if create_time is None:
            return None
        for (known_pid, known_time), code in _exit_codes.items():
            if known_pid == pid and _same_time(known_time, create_time):
                return code
        return None


def _forget_exit_code(pid: int, create_time: float) -> None:
    with _children_lock:
        for key in [k for k in _exit_codes if k[0] == pid and _same_time(k[1], create_time)]:
            del _exit_codes[key]


def _child_running(pid: int) -> bool:
    """True while `pid` is a child we started and have not reaped yet (reaping it if done)."""
    with _children_lock:
        known = pid in _children
    return known and _reap(pid) is None


def _reap_all() -> None:
    """Poll every child we started, so that none stays a zombie between observe passes."""
    with _children_lock:
        pids = list(_children)
    for pid in pids:
        _reap(pid)


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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class _Running:
    identity: Identity
    pid: int
    ppid: int
    create_time: float


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

    # ---- paths -------------------------------------------------------------------------------

    def log_path(self, model_id: str) -> Path:
        return self.logs_dir / f"{model_id}.log"

    def record_path(self, model_id: str) -> Path:
        return self.records_dir / f"{model_id}.json"

    # ---- start -------------------------------------------------------------------------------

    def launch(self, command: Command, *, host: str = "127.0.0.1") -> Handle:
        """Start `command` detached. Its env must carry the markers (see engine_env)."""
        identity = identity_from_env(command.env, self.namespace)
        if identity is None:
            raise ValueError("command.env lacks this namespace's engine markers")
        self._refuse_duplicate(identity.model_id)
        if port_in_use(host, identity.port):
            raise EngineError(f"port {identity.port} is already in use")
        env = {k: v for k, v in os.environ.items() if k not in DAEMON_SECRETS} | command.env
        if not command.argv or find_executable(command.argv[0], env.get("PATH")) is None:
            name = command.argv[0] if command.argv else "(empty argv)"
            raise EngineError(f"executable not found: {name}")
        log_path = self.log_path(identity.model_id)
        started_at = time.time()
        popen = self._spawn(command.argv, env, log_path, identity, started_at)
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = started_at  # exited at once; still recorded so the exit is reported
        _register_child(popen, create_time)
        record = EngineRecord(
            namespace=self.namespace,
            model_id=identity.model_id,
            framework=identity.framework,
            spec_hash=identity.spec_hash,
            port=identity.port,
            gpus=identity.gpus,
            memory_mb=identity.memory_mb,
            pid=popen.pid,
            create_time=create_time,
            argv=tuple(command.argv),
            started_at=started_at,
            log_path=str(log_path),
        )
        self.records_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.record_path(identity.model_id), record.to_json())
        return record.handle(alive=True)

    def _refuse_duplicate(self, model_id: str) -> None:
        """Nothing is ever started twice: a live engine of the same model must be stopped first."""
        record = self._read_record(self.record_path(model_id))
        if record is not None and _is_alive(record.pid, record.create_time):
            raise EngineError(f"{model_id} is already running (pid {record.pid})")

    def _spawn(
        self,
        argv: tuple[str, ...],
        env: dict[str, str],
        log_path: Path,
        identity: Identity,
        started_at: float,
    ) -> subprocess.Popen[bytes]:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._rotate_at_start(log_path)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
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
        except OSError as exc:
            raise EngineError(f"cannot start {argv[0]}: {exc}") from exc
        finally:
            os.close(fd)

    def _rotate_at_start(self, log_path: Path) -> None:
        try:
            if log_path.stat().st_size >= self.log_max_bytes:
                rotate_by_rename(log_path, self.log_backups)
        except FileNotFoundError:
            pass

    # ---- observe -----------------------------------------------------------------------------

    def observe(self, framework: str | None = None) -> list[Handle]:
        """Every engine of this namespace (of `framework`, if given): running ones found in the
        process table, plus dead ones that still have a record (alive=False)."""
        _reap_all()
        running = self._scan()
        records = self._read_records()
        handles: list[Handle] = []
        for proc in running:
            if framework is not None and proc.identity.framework != framework:
                continue
            handles.append(self._running_handle(proc, records.get(proc.identity.model_id)))
            self._rotate_if_large(proc.identity.model_id)
        alive_keys = {(p.pid, p.create_time) for p in running}
        for record in records.values():
            if framework is not None and record.framework != framework:
                continue
            if (record.pid, record.create_time) not in alive_keys:
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
            found.append(
                _Running(identity, proc.info["pid"], proc.info["ppid"], proc.info["create_time"])
            )
        by_pid = {p.pid: p for p in found}
        return [
            p
            for p in found
            if p.ppid not in by_pid or by_pid[p.ppid].identity.model_id != p.identity.model_id
        ]

    def _running_handle(self, proc: _Running, record: EngineRecord | None) -> Handle:
        matches = record is not None and _same_process(record, proc.pid, proc.create_time)
        ident = proc.identity
        return Handle(
            model_id=ident.model_id,
            framework=ident.framework,
            spec_hash=ident.spec_hash,
            port=ident.port,
            gpus=ident.gpus,
            memory_mb=ident.memory_mb,
            started_at=record.started_at if matches and record else proc.create_time,
            pid=proc.pid,
            create_time=proc.create_time,
            alive=True,
            log_path=str(self.log_path(ident.model_id)),
        )

    def _dead_handle(self, record: EngineRecord) -> Handle:
        exit_code = record.exit_code
        if exit_code is None:
            exit_code = _reap(record.pid, record.create_time)
            if exit_code is not None:
                # remembered for the next reconciler process, which is not the parent
                _write_atomic(
                    self.record_path(record.model_id),
                    EngineRecord(**{**asdict(record), "exit_code": exit_code}).to_json(),
                )
        return record.handle(alive=False, exit_code=exit_code)

    def _rotate_if_large(self, model_id: str) -> None:
        path = self.log_path(model_id)
        try:
            if path.stat().st_size >= self.log_max_bytes:
                rotate_by_copy_truncate(path, self.log_backups)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot rotate %s: %s", path, exc)

    def _read_records(self) -> dict[str, EngineRecord]:
        try:
            paths = list(self.records_dir.glob("*.json"))
        except OSError:
            return {}
        records = {}
        for path in paths:
            record = self._read_record(path)
            if record is not None and record.namespace == self.namespace:
                records[record.model_id] = record
        return records

    @staticmethod
    def _read_record(path: Path) -> EngineRecord | None:
        try:
            return EngineRecord.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # a damaged record only loses the exit report of a dead engine: drop it
            log.warning("ignoring unreadable engine record %s: %s", path, exc)
            return None

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
            _reap(handle.pid, handle.create_time)
        self._forget(handle)

    def _verified(self, handle: Handle) -> psutil.Process | None:
        assert handle.pid is not None and handle.create_time is not None
        try:
            proc = psutil.Process(handle.pid)
            if not _same_time(proc.create_time(), handle.create_time):
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
        _signal(group, members, signal.SIGTERM)
        if _wait_gone(proc.pid, group, members, grace_s):
            return
        log.warning("pid %s ignored SIGTERM for %.1fs: SIGKILL", proc.pid, grace_s)
        _signal(group, members, signal.SIGKILL)
        if not _wait_gone(proc.pid, group, members, KILL_WAIT_S):
            raise EngineError(f"pid {proc.pid} survived SIGKILL")

    def _forget(self, handle: Handle) -> None:
        """Drop the record of an engine stopped on purpose (only if it names this process)."""
        path = self.record_path(handle.model_id)
        record = self._read_record(path)
        if record is None:
            return
        if handle.pid is None or _same_process(record, handle.pid, handle.create_time):
            path.unlink(missing_ok=True)
            _forget_exit_code(record.pid, record.create_time)

    # ---- logs --------------------------------------------------------------------------------

    def tail(self, handle: Handle, lines: int = 20) -> list[str]:
        path = Path(handle.log_path) if handle.log_path else self.log_path(handle.model_id)
        return tail_lines(path, lines)


def _same_time(a: float, b: float | None) -> bool:
    # psutil derives create_time from boot time + clock ticks: stable for one process, but
    # allow for float noise through JSON and across psutil versions
    return b is not None and abs(a - b) < 0.01


def _same_process(record: EngineRecord, pid: int, create_time: float | None) -> bool:
    return record.pid == pid and _same_time(record.create_time, create_time)


def _is_alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return _same_time(proc.create_time(), create_time) and not _exited(proc)
    except psutil.NoSuchProcess:
        return False


def _signal(group: int | None, members: list[psutil.Process], sig: signal.Signals) -> None:
    if group is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
        return
    for member in members:  # the engine left its group: signal what we know of it
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(sig)


def _wait_gone(pid: int, group: int | None, members: list[psutil.Process], timeout: float) -> bool:
    """Wait until the engine, its known children and its process group are gone."""
    deadline = time.monotonic() + timeout
    pause = 0.002  # most engines exit at once: look again soon, then back off to POLL_S
    while True:
        if (
            not _child_running(pid)
            and all(_exited(m) for m in members)
            and not _group_has_live_members(group)
        ):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, POLL_S)


def _exited(proc: psutil.Process) -> bool:
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
            if os.getpgid(proc.pid) == group and not _exited(proc):
                return True
        except ProcessLookupError:
            continue
    return False


class ProcessEngine:
    """The shell shared by engines that run as local processes (llama.cpp, vLLM).

    Subclasses provide `framework`, the pure `command()` and `preflight()`, which raises
    EngineError for the problems a retry cannot fix (missing executable or model file,
    parameters the executable cannot express).
    """

    framework: str = ""

    def __init__(self, state_dir: str | os.PathLike[str], namespace: str | None = None) -> None:
        self.supervisor = ProcessSupervisor(state_dir, namespace)

    @property
    def namespace(self) -> str:
        return self.supervisor.namespace

    def env(self, spec: ModelSpec, placement: EnginePlacement) -> dict[str, str]:
        """Pure: spec.env + CUDA_VISIBLE_DEVICES + markers (the delta over os.environ)."""
        return engine_env(spec, placement, self.framework, self.namespace)

    def command(self, spec: ModelSpec, placement: EnginePlacement) -> Command:
        raise NotImplementedError

    def preflight(self, spec: ModelSpec, placement: EnginePlacement) -> None:
        """Raise EngineError when the engine cannot start whatever the retries."""

    def health_path(self, spec: ModelSpec) -> str:
        """The HTTP path that answers 200 once the engine is ready."""
        return spec.health_check.path

    def start(self, spec: ModelSpec, placement: EnginePlacement) -> Handle:
        self.preflight(spec, placement)
        return self.supervisor.launch(self.command(spec, placement), host=placement.host)

    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        self.supervisor.stop(handle, grace_s)

    def observe(self) -> list[Handle]:
        return self.supervisor.observe(self.framework)

    def logs(self, handle: Handle, lines: int = 20) -> list[str]:
        return self.supervisor.tail(handle, lines)

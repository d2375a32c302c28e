"""Helpers for tests of the GitOps loop: `reconciler run` following a git repository.

A `Site` is one simulated GPU server (a `Host` of apply_support.py: declared GPUs, stand-in vLLM
engines, a state directory) whose `desired-state/` lives in a real git repository made with
GitPython: `host.root` is the operator's working tree; in remote mode it is a clone of a bare
repository beside it (`<root>-remote.git`, the "git server") and the daemon follows that one
(`run --repo URL --branch main --path desired-state`), keeping its own clone under the state
directory.

`RunProcess` is `python -m reconciler run ...` in a subprocess, logging to a file, stopped with a
signal. `observe()` says what really runs (engine processes of the namespace, with the spec hash
each carries in its environment) next to what the state file says; `wait_until` polls such
observations with generous timeouts and fails with the daemon's log and the last events.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import git
import psutil
from apply_support import Host, wait_for

from reconciler.core.instance import Status
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import MARKER_HASH, MARKER_MODEL, MARKER_NAMESPACE
from reconciler.state.directory import STATE_FILE
from reconciler.state.reading import read_state
from reconciler.state.statefile import State

T = TypeVar("T")

IDENTITY = {
    "GIT_AUTHOR_NAME": "Ada Operator",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Operator",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}
GITIGNORE = "state/\nbin/\n*.log\n"
SETTLE_TIMEOUT_S = 60.0
"""How long a change may take to show on a loaded 2-core machine (it takes ~1 s idle)."""
STOP_TIMEOUT_S = 30.0


def spec_hash(spec: dict[str, Any]) -> str:
    """The hash the reconciler gives a spec (engines carry it in RECONCILER_SPEC_HASH)."""
    return ModelSpec.model_validate(spec).spec_hash()


# -- git ------------------------------------------------------------------------------------------


@dataclass
class Site:
    """A host whose desired state is a git working tree; in remote mode, a clone of `remote`."""

    host: Host
    repo: git.Repo
    remote: Path | None = None

    @property
    def url(self) -> str:
        assert self.remote is not None, "a local site has no remote"
        return self.remote.as_uri()

    def head(self) -> str:
        return self.repo.head.commit.hexsha

    def remote_head(self, branch: str = "main") -> str:
        assert self.remote is not None
        with contextlib.closing(git.Repo(self.remote)) as bare:
            return bare.commit(branch).hexsha

    def commit(self, message: str, *, push: bool = False) -> str:
        """Commit everything under the working tree (hooks skipped); push when asked."""
        self.repo.git.add("-A")
        self.repo.git.commit("-q", "--no-verify", "--allow-empty", "-m", message)
        if push:
            self.push()
        return self.head()

    def push(self, *, force: bool = False) -> None:
        args = ["--no-verify", "-q", "origin", "HEAD:refs/heads/main"]
        self.repo.git.push(*(["--force", *args] if force else args))

    def reset_hard(self, rev: str) -> None:
        """Rewrite local history (for a force-push)."""
        self.repo.git.reset("-q", "--hard", rev)


def local_site(host: Host, message: str = "initial desired state") -> Site:
    """Make host.root a git repository holding desired-state/ (written already) and commit it.
    Git runs with a fixed identity, here and in the host's CLI runs (`rollback` commits)."""
    host.env.update(IDENTITY)
    (host.root / ".gitignore").write_text(GITIGNORE)
    repo = git.Repo.init(host.root, initial_branch="main")
    repo.git.update_environment(**IDENTITY)
    site = Site(host, repo)
    site.commit(message)
    return site


def remote_site(host: Host, message: str = "initial desired state") -> Site:
    """A bare repository next to host.root (the git server) and host.root as an operator's
    clone of it, holding desired-state/ (written already), committed and pushed."""
    bare = host.root.parent / f"{host.root.name}-remote.git"
    git.Repo.init(bare, bare=True, initial_branch="main").close()
    site = local_site(host, message)
    site.repo.create_remote("origin", bare.as_uri())
    site.remote = bare
    site.push()
    site.repo.git.branch("-q", "--set-upstream-to", "origin/main")
    return site


# -- the daemon -----------------------------------------------------------------------------------


@dataclass
class RunProcess:
    """`reconciler run` as a user starts it, for one host."""

    host: Host
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    """wall time of the start (state files written after it come from this daemon)"""
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> RunProcess:
        self.log_path = self.host.root.parent / f"{self.host.root.name}-daemon.log"
        env = {**self.host.cli_env(), **self.env}
        self.started_at = time.time()
        with open(self.log_path, "ab") as log:
            log.write(f"--- reconciler run {' '.join(self.args)}\n".encode())
            log.flush()
            # every daemon's gateway on a port of its own: the default 8000 may be taken
            gateway = ("--gateway-listen", f"127.0.0.1:{_free_port()}")
            self.process = subprocess.Popen(
                [*self.host.command("run", *self.args), *gateway],
                env=env,
                cwd=self.host.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_first_pass(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Until this daemon has written the state file once (its first pass is done)."""

        def written() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.process.returncode})\n{self.log()}")
            state = read_state_quietly(self.host)
            return bool(state and state.applied_at and state.applied_at >= self.started_at)

        assert wait_for(written, timeout_s, 0.1), f"no pass within {timeout_s}s\n{self.log()}"

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Send `sig` and wait; the exit code (None if it was not running). A daemon that does
        not stop is killed and the test fails."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(sig)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            name = signal.Signals(sig).name
            raise AssertionError(f"the daemon ignored {name}\n{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL: a crash, or the OOM killer."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self, chars: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""
        return text[-chars:]


@contextlib.contextmanager
def daemon_running(
    host: Host, *args: str, env: dict[str, str] | None = None
) -> Iterator[RunProcess]:
    """`reconciler run ARGS` until the block ends (SIGTERM, and the exit code must be 0)."""
    run = RunProcess(host, args, env or {}).start()
    try:
        yield run
    except BaseException:
        run.stop()  # the test's own failure is the one to report
        raise
    if run.alive():
        code = run.stop()
        assert code == 0, f"the daemon exited {code} on SIGTERM\n{run.log()}"


# -- what runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    pid: int
    spec_hash: str


def engines(host: Host) -> dict[str, list[Engine]]:
    """Live engine processes of the host's namespace by model id (zombies excluded)."""
    found: dict[str, list[Engine]] = {}
    for proc in psutil.process_iter(["pid", "environ", "status"]):
        env = proc.info["environ"] or {}
        if env.get(MARKER_NAMESPACE) != host.namespace:
            continue
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        model = env.get(MARKER_MODEL, "?")
        found.setdefault(model, []).append(Engine(proc.info["pid"], env.get(MARKER_HASH, "")))
    return {m: sorted(e, key=lambda x: x.pid) for m, e in sorted(found.items())}


def read_state_quietly(host: Host) -> State | None:
    """The state file, or None while there is none (a corrupt one raises: it must never be)."""
    try:
        return read_state(host.state_dir / STATE_FILE)
    except FileNotFoundError:
        return None


@dataclass
class Observation:
    state: State | None
    engines: dict[str, list[Engine]]

    def pids(self) -> dict[str, int]:
        """model id -> pid, for models with exactly one engine."""
        return {m: e[0].pid for m, e in self.engines.items() if len(e) == 1}

    def hashes(self) -> dict[str, str]:
        return {m: e[0].spec_hash for m, e in self.engines.items() if len(e) == 1}

    def running(self, expected: dict[str, str]) -> bool:
        """Exactly the `expected` models (id -> spec hash) run: one engine each, with that hash,
        status running in the state file with that pid; no other engine exists."""
        if self.state is None or set(self.engines) != set(expected):
            return False
        for model_id, wanted_hash in expected.items():
            found = self.engines[model_id]
            model = self.state.models.get(model_id)
            if len(found) != 1 or found[0].spec_hash != wanted_hash or model is None:
                return False
            if model.status != Status.running or model.pid != found[0].pid:
                return False
        return True

    def describe(self) -> str:
        statuses = {}
        if self.state is not None:
            statuses = {m.id: f"{m.status} pid={m.pid}" for m in self.state.models.values()}
        engines_text = {m: [(e.pid, e.spec_hash[:8]) for e in es] for m, es in self.engines.items()}
        revision = self.state.revision if self.state else None
        dirty = self.state.revision_dirty if self.state else None
        problems = self.state.problems if self.state else None
        return (
            f"state: revision={revision} dirty={dirty} models={statuses} problems={problems}\n"
            f"engines: {engines_text}"
        )


def observe(host: Host) -> Observation:
    return Observation(read_state_quietly(host), engines(host))


def wait_until(
    host: Host,
    check: Callable[[Observation], T],
    what: str,
    run: RunProcess | None = None,
    timeout_s: float = SETTLE_TIMEOUT_S,
) -> Observation:
    """Poll observations until `check` holds; fail with what was seen, the log and events."""
    last: list[Observation] = []

    def probe() -> Observation | None:
        if run is not None and run.process is not None and run.process.poll() is not None:
            raise AssertionError(f"the daemon exited ({run.process.returncode})\n{run.log()}")
        seen = observe(host)
        last[:] = [seen]
        return seen if check(seen) else None

    found = wait_for(probe, timeout_s, 0.1)
    if found is None:
        events = "\n".join(json.dumps(e) for e in host.events()[-15:])
        log = run.log() if run is not None else ""
        raise AssertionError(
            f"not within {timeout_s:g}s: {what}\n{last[0].describe()}\n"
            f"--- last events\n{events}\n--- daemon log\n{log}"
        )
    return found


def wait_running(
    host: Host, expected: dict[str, str], run: RunProcess | None = None, **kwargs: Any
) -> Observation:
    return wait_until(
        host, lambda o: o.running(expected), f"exactly {sorted(expected)} running", run, **kwargs
    )


def wait_quiet(host: Host, run: RunProcess | None, quiet_s: float = 1.5, **kwargs: Any) -> None:
    """Until the event log has not grown for `quiet_s` (a settled loop writes no events)."""
    seen: list[tuple[int, float]] = []

    def quiet(_: Observation) -> bool:
        count, now = len(host.events()), time.monotonic()
        if not seen or seen[0][0] != count:
            seen[:] = [(count, now)]
            return False
        return now - seen[0][1] >= quiet_s

    wait_until(host, quiet, f"no new event for {quiet_s}s", run, **kwargs)


ACTIONS = ("start", "stop", "restart", "preempt")


def actions_since(host: Host, count: int) -> list[tuple[str, str]]:
    """The engine actions (kind, model) recorded after the first `count` events, sorted."""
    return sorted(
        (e["kind"], e["model"]) for e in events_since(host, count) if e["kind"] in ACTIONS
    )


def wait_actions(
    host: Host, count: int, expected: list[tuple[str, str]], run: RunProcess | None = None
) -> None:
    """Until as many engine actions as `expected` are recorded after the first `count` events
    (an event is written just after its action shows); then they must be exactly those."""
    wait_until(host, lambda _: len(actions_since(host, count)) >= len(expected), f"{expected}", run)
    assert actions_since(host, count) == sorted(expected)


def events_since(host: Host, count: int, kind: str | None = None) -> list[dict[str, Any]]:
    """Events after the first `count` ones, optionally of one kind."""
    return [e for e in host.events()[count:] if kind is None or e["kind"] == kind]


def passes_during(host: Host, seconds: float) -> int:
    """How many passes wrote the state file in the next `seconds` (each pass stamps its start
    time in applied_at; sampled every 10 ms, so back-to-back passes may count as one)."""
    stamps = set()
    deadline = time.monotonic() + seconds
    first = read_state_quietly(host)
    while time.monotonic() < deadline:
        state = read_state_quietly(host)
        if state is not None and state.applied_at != (first.applied_at if first else None):
            stamps.add(state.applied_at)
        time.sleep(0.01)
    return len(stamps)


def kill_engine(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

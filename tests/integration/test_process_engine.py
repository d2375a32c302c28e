"""The process supervisor against real processes: small Python stand-ins for engines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from reconciler.core.spec import ModelSpec
from reconciler.engines.base import (
    MARKER_MODEL,
    MARKER_NAMESPACE,
    Command,
    EngineError,
    EnginePlacement,
    Handle,
)
from reconciler.engines.detached import ProcessSupervisor
from reconciler.engines.prober import probe, wait_ready
from reconciler.engines.process_engine import ProcessEngine

SLEEPER = "import time\nwhile True: time.sleep(1)"
# A well-behaved engine with a helper process: on SIGTERM it stops and reaps its helper.
WITH_HELPER = f"""
import signal, subprocess, sys, time
helper = subprocess.Popen([sys.executable, "-c", {SLEEPER!r}])
print("HELPER_PID", helper.pid, flush=True)
def bye(*_):
    helper.terminate()
    helper.wait()
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
while True:
    time.sleep(1)
"""
STUBBORN = f"import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n{SLEEPER}"
CHATTY = (
    "import sys, time\nfor i in range(100000): print('line', i, 'x' * 60)\nsys.stdout.flush()\n"
)
CHATTY += SLEEPER


class StandIn(ProcessEngine):
    """A ProcessEngine whose engine is a Python one-liner (the framework under test is the shell
    around it, not the engine)."""

    framework = "standin"

    def __init__(self, state_dir: Path, namespace: str | None = None, script: str = SLEEPER):
        super().__init__(state_dir, namespace)
        self.script = script

    def command(self, spec: ModelSpec, placement: EnginePlacement) -> Command:
        return Command(argv=(sys.executable, "-c", self.script), env=self.env(spec, placement))


def model(model_id: str = "m1", **fields: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": model_id, "framework": "llama_cpp", "model_path": "/m.gguf", **fields}
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def placement(gpus: tuple[int, ...] = (0,)) -> EnginePlacement:
    return EnginePlacement(gpus=gpus, port=free_port(), memory_mb=1234)


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """No process, not even a zombie."""
    return not psutil.pid_exists(pid)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state dir whose engines are all stopped after the test, whatever happened."""
    yield tmp_path
    supervisor = ProcessSupervisor(tmp_path)
    for handle in supervisor.observe():
        supervisor.stop(handle, grace_s=1)


def test_start_observe_and_adopt(state_dir: Path) -> None:
    engine = StandIn(state_dir)
    spec, where = model(), placement((2, 5))
    handle = engine.start(spec, where)
    assert handle.alive and handle.pid and handle.create_time
    assert (handle.model_id, handle.framework, handle.spec_hash) == (
        "m1",
        "standin",
        spec.spec_hash(),
    )
    assert (handle.port, handle.gpus, handle.memory_mb) == (where.port, (2, 5), 1234)

    assert engine.observe() == [handle]
    # a new reconciler process would build new objects: the markers alone find the engine
    adopted = StandIn(state_dir).observe()
    assert [(h.pid, h.create_time, h.alive) for h in adopted] == [
        (handle.pid, handle.create_time, True)
    ]
    (state_dir / "engines" / "m1.json").unlink()  # adoption needs no file
    (found,) = StandIn(state_dir).observe()
    assert (found.pid, found.create_time, found.spec_hash) == (
        handle.pid,
        handle.create_time,
        handle.spec_hash,
    )
    # another reconciler (state dir) and another framework see nothing of it
    assert StandIn(state_dir / "other").observe() == []
    assert ProcessSupervisor(state_dir).observe("llama_cpp") == []


def test_engine_is_detached_with_its_environment(state_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("RECONCILER_TEST_INHERITED", "yes")  # the daemon's: never an engine's
    monkeypatch.setenv("TZ", "Europe/Berlin")  # on the allow list (engines/identity.py)
    engine = StandIn(state_dir)
    handle = engine.start(model(env={"EXTRA": "1"}), placement((1, 3)))
    proc = psutil.Process(handle.pid)
    env = proc.environ()
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert env["EXTRA"] == "1"
    assert "RECONCILER_TEST_INHERITED" not in env
    assert env["TZ"] == "Europe/Berlin"
    assert env[MARKER_MODEL] == "m1"
    assert env[MARKER_NAMESPACE] == engine.namespace
    assert os.getsid(handle.pid) == handle.pid  # its own session...
    assert os.getpgid(handle.pid) == handle.pid  # ...and process group
    assert os.readlink(f"/proc/{handle.pid}/fd/0") == "/dev/null"
    assert proc.cmdline()[:2] == [sys.executable, "-c"]
    record = json.loads((state_dir / "engines" / "m1.json").read_text())
    assert record["pid"] == handle.pid
    assert record["argv"] == [sys.executable, "-c", SLEEPER]


def test_nothing_is_started_twice(state_dir: Path) -> None:
    engine = StandIn(state_dir)
    handle = engine.start(model(), placement())
    with pytest.raises(EngineError, match="already running"):
        engine.start(model(), placement())
    engine.stop(handle, grace_s=2)
    engine.start(model(), placement())  # fine once stopped


def test_stop_ends_the_whole_group_and_leaves_no_zombie(state_dir: Path) -> None:
    engine = StandIn(state_dir, script=WITH_HELPER)
    handle = engine.start(model(), placement())
    log = state_dir / "logs" / "m1.log"
    line = wait_for(lambda: [x for x in engine.logs(handle) if x.startswith("HELPER_PID ")])
    helper_pid = int(line[0].split()[1])
    assert psutil.Process(helper_pid).environ()[MARKER_MODEL] == "m1"
    # the helper inherited the markers, yet it is not a second engine
    assert [h.pid for h in engine.observe()] == [handle.pid]

    engine.stop(handle, grace_s=5)
    assert gone(handle.pid)
    assert gone(helper_pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(handle.pid, 0)  # no process left in the group
    assert engine.observe() == []  # stopped on purpose: no record left
    assert not (state_dir / "engines" / "m1.json").exists()
    assert log.exists()  # the log stays for the operator


def test_sigterm_is_escalated_to_sigkill(state_dir: Path) -> None:
    engine = StandIn(state_dir, script=STUBBORN)
    handle = engine.start(model(), placement())
    time.sleep(0.5)  # let it install its SIGTERM handler
    started = time.monotonic()
    engine.stop(handle, grace_s=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert gone(handle.pid)


def test_killed_engine_is_reported_dead_with_its_exit_code(state_dir: Path) -> None:
    engine = StandIn(state_dir)
    handle = engine.start(model(), placement())
    os.kill(handle.pid, signal.SIGKILL)
    (dead,) = wait_for(lambda: [h for h in engine.observe() if not h.alive])
    assert (dead.pid, dead.create_time, dead.started_at) == (
        handle.pid,
        handle.create_time,
        handle.started_at,
    )
    assert dead.exit_code == -signal.SIGKILL
    assert gone(handle.pid)  # reaped by observe()
    # the exit code is kept for the next reconciler process, which is not the parent
    record = json.loads((state_dir / "engines" / "m1.json").read_text())
    assert record["exit_code"] == -signal.SIGKILL
    (again,) = StandIn(state_dir).observe()
    assert not again.alive and again.exit_code == -signal.SIGKILL

    engine.stop(dead)  # acknowledges the death: the record goes
    assert engine.observe() == []


def test_exit_status_of_an_engine_that_quits(state_dir: Path) -> None:
    engine = StandIn(state_dir, script="import sys; print('bad flag', flush=True); sys.exit(3)")
    handle = engine.start(model(), placement())
    (dead,) = wait_for(lambda: [h for h in engine.observe() if not h.alive])
    assert dead.exit_code == 3
    assert engine.logs(handle)[-1] == "bad flag"


def test_a_recycled_pid_is_never_signalled(state_dir: Path) -> None:
    engine = StandIn(state_dir)
    handle = engine.start(model(), placement())
    assert handle.create_time is not None
    engine.stop(replace(handle, create_time=handle.create_time - 1000), grace_s=1)
    assert psutil.Process(handle.pid).status() != psutil.STATUS_ZOMBIE
    assert [h.pid for h in engine.observe()] == [handle.pid]  # still ours, still recorded

    # a process with the right pid and create_time but without our markers is not signalled
    stranger = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
    try:
        fake = Handle(
            model_id="m1",
            framework="standin",
            spec_hash="x",
            port=1,
            gpus=(),
            memory_mb=0,
            started_at=0.0,
            pid=stranger.pid,
            create_time=psutil.Process(stranger.pid).create_time(),
        )
        engine.stop(fake, grace_s=1)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_port_in_use_is_a_permanent_error(state_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EngineError, match=f"port {port} is already in use"):
            StandIn(state_dir).start(model(), EnginePlacement(gpus=(), port=port))
    assert not (state_dir / "engines" / "m1.json").exists()


def test_missing_executable_is_a_permanent_error(state_dir: Path) -> None:
    class Missing(StandIn):
        def command(self, spec: ModelSpec, where: EnginePlacement) -> Command:
            return Command(argv=("/nonexistent/engine", "--serve"), env=self.env(spec, where))

    with pytest.raises(EngineError, match="executable not found: /nonexistent/engine"):
        Missing(state_dir).start(model(), placement())
    assert ProcessSupervisor(state_dir).observe() == []


def test_log_rotation_at_start_and_while_running(state_dir: Path) -> None:
    log = state_dir / "logs" / "m1.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"old run\n" * 2000)  # 16 KB: over the limit below
    engine = StandIn(state_dir, script=CHATTY)
    engine.supervisor.log_max_bytes = 8192
    engine.supervisor.log_backups = 2
    handle = engine.start(model(), placement())
    assert (state_dir / "logs" / "m1.log.1").read_bytes().startswith(b"old run")
    assert log.read_text().startswith("--- ")  # the start header opens the new log

    wait_for(lambda: "line 99999" in log.read_text())  # 7 MB written by the engine
    engine.observe()  # copy-truncate: the engine keeps writing to the same file
    assert log.stat().st_size == 0
    assert "line 99999" in (state_dir / "logs" / "m1.log.1").read_text()
    assert (state_dir / "logs" / "m1.log.2").read_bytes().startswith(b"old run")
    assert not (state_dir / "logs" / "m1.log.3").exists()  # only log_backups kept
    assert psutil.Process(handle.pid).is_running()
    engine.stop(handle, grace_s=2)


def test_logs_returns_the_last_lines(state_dir: Path) -> None:
    script = "import sys\nfor i in range(50): print('row', i)\nsys.stdout.flush()\n" + SLEEPER
    engine = StandIn(state_dir, script=script)
    handle = engine.start(model(), placement())
    wait_for(lambda: engine.logs(handle, 1) == ["row 49"])
    assert engine.logs(handle, 3) == ["row 47", "row 48", "row 49"]
    assert engine.logs(handle, 0) == []


def test_wait_ready_stops_waiting_for_an_engine_that_exited(state_dir: Path) -> None:
    engine = StandIn(state_dir, script="import sys; sys.exit(1)")
    where = placement()
    engine.start(model(), where)
    started = time.monotonic()
    result = wait_ready(
        f"http://127.0.0.1:{where.port}/health",
        timeout=60,
        alive=lambda: any(h.alive for h in engine.observe()),
    )
    assert not result.ok
    assert result.error == "engine process exited"
    assert time.monotonic() - started < 10


def test_probe_reports_status_and_errors() -> None:
    class Unready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ready = probe(base + "/ok", 2)
        assert (ready.ok, ready.status_code, ready.error) == (True, 200, None)
        unready = probe(base + "/health", 2)
        assert (unready.ok, unready.status_code, unready.error) == (False, 503, "HTTP 503")
        assert not wait_ready(base + "/health", timeout=0.5, interval=0.1).ok
    finally:
        server.shutdown()
        server.server_close()
    refused = probe(base + "/ok", 1)
    assert (
        not refused.ok and refused.status_code is None and "ConnectError" in (refused.error or "")
    )

"""Issue 14, case 1 (the check that catches the variants nobody listed): after start, the
reconciler observes the sockets the engine's process tree listens on; anything but the assigned
address and port stops the engine and puts its model in `error` with the reason.

First release: an engine that listened on 0.0.0.0 (through its environment or a flag hidden in a
value) showed "running". Whatever the cause, the result is what is checked: here a stand-in
engine opens a second listening socket (on loopback: tests listen on 127.0.0.1 only), in a live
daemon, beside an honest engine that keeps running.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apply_support import managed_host, stand_in
from daemon_support import Daemon, free_port, init_repo

LEAKY_ENGINE = Path(__file__).resolve().parent / "leaky_engine.py"


def leaky_wrapper(directory: Path) -> Path:
    """An executable `vllm` that runs leaky_engine.py with this interpreter."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "vllm"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {LEAKY_ENGINE} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with managed_host(tmp_path / "site") as host:
        host.write_cluster([{"index": 0, "memory_mb": 8000}, {"index": 1, "memory_mb": 8000}])
        host.write_model(stand_in("honest"))
        host.write_model(stand_in("leaky", env={"LEAK_LISTEN": "1"}))
        init_repo(host)
        host.env["RECONCILER_VLLM"] = str(leaky_wrapper(host.root / "leaky-bin"))
        daemon = Daemon(host, free_port(), "t0ken", None, extra_args=("--resync", "2"))
        try:
            daemon.start()
            yield daemon
        finally:
            daemon.stop()


def stays(probe: Callable[[], bool], hold_s: float, within_s: float) -> bool:
    """True once `probe` has held for `hold_s` in a row, within `within_s`."""
    deadline = time.monotonic() + within_s
    since = None
    while time.monotonic() < deadline:
        if not probe():
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= hold_s:
            return True
        time.sleep(0.2)
    return False


def test_an_engine_listening_beyond_its_address_and_port_is_stopped_in_error(
    daemon: Daemon,
) -> None:
    def stopped_in_error() -> bool:
        return daemon.statuses().get("leaky") == "error" and "leaky" not in daemon.host.engines()

    # retries (if any) end in the same place: stopped, in error, and it stays so
    assert stays(stopped_in_error, hold_s=5, within_s=90), (
        f"{daemon.statuses()} {daemon.host.engines()}\n{daemon.log()}"
    )
    reason = daemon.json("/api/v1/models/leaky").get("last_error") or ""
    assert "127.0.0.1:" in reason and "listen" in reason, reason
    assert daemon.statuses()["honest"] == "running"
    assert len(daemon.host.engines().get("honest", [])) == 1

"""The state directory is private: made 0700 with 0600 files, and one that another user owns or
that group or others may write is refused before anything starts (reconciler/state/private.py).

Real commands on a real host: `reconciler apply` and `reconciler run` in subprocesses, engines
being stand-in vLLM processes; permissions are read with stat() from what they left.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apply_support import CliResult, Host, managed_host, stand_in
from components import require
from daemon_support import running_daemon

from reconciler.state.directory import BULLETIN_FILE, EVENTS_FILE, LAST_VALID_FILE, STATE_FILE

QUIET = {"health_check": {"interval_s": 3600}}
NOBODY = 65534


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path / "site") as host:
        host.write_model(stand_in("alpha", **QUIET))
        yield host


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def refused(host: Host, result: CliResult, shown: str) -> None:
    """Exit 1, a message naming the directory, what is wrong and the fix, and nothing started."""
    assert result.returncode == 1, str(result)
    message = " ".join(result.stderr.split())  # rich may wrap a long line
    assert f"state directory {host.state_dir}" in message, str(result)
    assert shown in message, str(result)
    assert f"chmod 700 {host.state_dir}" in message, str(result)
    assert not host.engines(), "an engine started although the state directory was refused"
    assert sorted(p.name for p in host.state_dir.iterdir()) == [], "it wrote in the directory"


def test_apply_refuses_a_state_dir_writable_by_others(host: Host) -> None:
    host.state_dir.mkdir()
    os.chmod(host.state_dir, 0o777)
    try:
        result = host.cli("apply", str(host.desired), "--timeout", "60")
        refused(host, result, "mode 0777")
        assert "writable by group and others" in " ".join(result.stderr.split())
    finally:
        os.chmod(host.state_dir, 0o700)  # for managed_host's stop-all


def test_apply_refuses_a_state_dir_writable_by_its_group(host: Host) -> None:
    host.state_dir.mkdir()
    os.chmod(host.state_dir, 0o770)
    try:
        refused(host, host.cli("apply", str(host.desired), "--once"), "mode 0770")
    finally:
        os.chmod(host.state_dir, 0o700)


def test_run_refuses_a_state_dir_writable_by_others(host: Host) -> None:
    host.state_dir.mkdir()
    os.chmod(host.state_dir, 0o757)
    try:
        result = host.cli("run", str(host.desired), "--listen", "127.0.0.1:0", timeout=60)
        refused(host, result, "mode 0757")
        assert "writable by others" in " ".join(result.stderr.split())
    finally:
        os.chmod(host.state_dir, 0o700)


def test_apply_refuses_a_state_dir_owned_by_another_user(host: Host) -> None:
    require("root (to give the state directory to another user)", "run as root", os.geteuid() == 0)
    host.state_dir.mkdir(mode=0o700)
    os.chown(host.state_dir, NOBODY, -1)
    try:
        result = host.cli("apply", str(host.desired), "--once")
        refused(host, result, f"owner uid {NOBODY}")
        assert f"chown {os.geteuid()} {host.state_dir}" in " ".join(result.stderr.split())
    finally:
        os.chown(host.state_dir, os.geteuid(), -1)


def test_a_private_state_dir_of_an_earlier_version_is_accepted_and_its_files_made_private(
    host: Host,
) -> None:
    """A directory made by `mkdir` (0755: nobody else may write it) is accepted as it is; files
    an earlier version wrote 0644 are 0600 once written again."""
    host.state_dir.mkdir()
    os.chmod(host.state_dir, 0o755)
    events = host.state_dir / EVENTS_FILE
    events.write_text("")
    os.chmod(events, 0o644)
    host.apply()
    assert host.statuses() == {"alpha": "running"}
    assert mode(host.state_dir) == 0o755
    assert mode(events) == 0o600 and events.stat().st_size > 0
    assert mode(host.state_dir / STATE_FILE) == 0o600


def test_a_fresh_state_dir_is_0700_with_0600_files_after_a_real_run(tmp_path: Path) -> None:
    """`reconciler run` with its API and gateway and one engine: every directory it made is
    0700 and every file in it 0600, logs included (the umask here is 022)."""
    with running_daemon(tmp_path / "site", [stand_in("alpha", **QUIET)]) as daemon:
        state_dir = daemon.host.state_dir
        daemon.wait_ready()
        daemon.wait_statuses({"alpha": "running"})
        # through the gateway once, so that it has logged and routed
        r = httpx.get(f"{daemon.gateway_url}/models", timeout=10)
        assert r.status_code == 200, r.text
        found = {p.relative_to(state_dir).as_posix(): p for p in state_dir.rglob("*")}
        expected = {
            STATE_FILE,
            EVENTS_FILE,
            BULLETIN_FILE,
            LAST_VALID_FILE,
            "logs",
            "logs/alpha.log",
            "logs/api.log",
            "logs/gateway.log",
        }
        assert expected <= set(found), sorted(found)
        assert mode(state_dir) == 0o700
        loose = {
            name: oct(mode(p))
            for name, p in found.items()
            if mode(p) != (0o700 if p.is_dir() else 0o600)
        }
        assert loose == {}, loose
        assert (state_dir / "logs" / "alpha.log").stat().st_size > 0

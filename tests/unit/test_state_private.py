"""The state directory's permissions (reconciler/state/private.py, files.py): what is made is
private whatever the umask, and a directory others may change is refused with the fix."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from components import require

from reconciler.core.events import Event, EventKind
from reconciler.state.directory import (
    UnsafeStateDir,
    atomic_write,
    check_private,
    open_append,
    private_dir,
)
from reconciler.state.eventlog import append_event

EVENT = Event(1.0, EventKind.error, None, "x")


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_what_is_made_is_private_even_under_a_umask_of_zero(tmp_path: Path) -> None:
    with umask(0):
        atomic_write(tmp_path / "state" / "restart-requests" / "alpha", "1")
        fd = open_append(tmp_path / "state" / "logs.log")
        os.close(fd)
        append_event(tmp_path / "state" / "events.jsonl", EVENT)
    assert mode(tmp_path / "state") == 0o700
    assert mode(tmp_path / "state" / "restart-requests") == 0o700
    assert mode(tmp_path / "state" / "restart-requests" / "alpha") == 0o600
    assert mode(tmp_path / "state" / "logs.log") == 0o600
    assert mode(tmp_path / "state" / "events.jsonl") == 0o600


def test_a_file_an_earlier_version_left_readable_is_made_private_when_written(
    tmp_path: Path,
) -> None:
    state, events = tmp_path / "state.yaml", tmp_path / "events.jsonl"
    for path in (state, events):
        path.write_text("old\n")
        os.chmod(path, 0o644)
    atomic_write(state, "new\n")
    append_event(events, EVENT)
    assert (mode(state), mode(events)) == (0o600, 0o600)
    assert events.read_text().startswith("old\n{")


def test_an_explicit_mode_is_kept(tmp_path: Path) -> None:
    atomic_write(tmp_path / "hook", "#!/bin/sh\n", mode=0o755)  # git hooks must run
    assert mode(tmp_path / "hook") == 0o755


def test_private_dir_leaves_existing_parents_alone(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    private_dir(tmp_path / "a" / "b")
    assert (mode(tmp_path), mode(tmp_path / "a"), mode(tmp_path / "a" / "b")) == (
        0o755,
        0o700,
        0o700,
    )


@pytest.mark.parametrize("allowed", [0o700, 0o750, 0o755, 0o500])
def test_a_directory_nobody_else_may_write_is_accepted(tmp_path: Path, allowed: int) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    os.chmod(directory, allowed)
    assert check_private(directory) == directory
    assert mode(directory) == allowed  # accepted as it is, not changed behind the operator


@pytest.mark.parametrize(
    ("loose", "who"),
    [
        (0o777, "group and others"),
        (0o1777, "group and others"),
        (0o770, "group"),
        (0o703, "others"),
    ],
)
def test_a_directory_others_may_write_is_refused_with_the_fix(
    tmp_path: Path, loose: int, who: str
) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    os.chmod(directory, loose)
    with pytest.raises(UnsafeStateDir) as refused:
        check_private(directory)
    message = str(refused.value)
    assert f"state directory {directory} (mode {loose & 0o7777:04o}" in message
    assert f"writable by {who}:" in message
    assert f"chmod 700 {directory}" in message


def test_a_missing_directory_is_made_private(tmp_path: Path) -> None:
    with umask(0o022):
        check_private(tmp_path / "new" / "state")
    assert mode(tmp_path / "new" / "state") == 0o700


def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(UnsafeStateDir, match="is not a directory"):
        check_private(tmp_path / "state")


def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    require(
        "root (to give a directory to another user)", "run the tests as root", os.geteuid() == 0
    )
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, -1)
    with pytest.raises(UnsafeStateDir) as refused:
        check_private(directory)
    assert "owner uid 65534" in str(refused.value)
    assert f"not owned by uid {os.geteuid()}" in str(refused.value)

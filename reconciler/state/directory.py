"""The state directory: its file names (one place for every module that touches it), its privacy
(only the user the reconciler runs as may enter it: 0700 directories, 0600 files), and the one
way anything in it is written: whole files, atomically and durably.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

STATE_FILE = "state.yaml"
LAST_VALID_FILE = "last-valid-desired.json"
EVENTS_FILE = "events.jsonl"
RESTART_REQUESTS = "restart-requests"
BULLETIN_FILE = "loop.json"


def namespace_for(state_dir: Path) -> str:
    """Engines are marked with this, so reconcilers with different state dirs never mix."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]


DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafeStateDir(Exception):
    """The state directory is not private to this user; the message says why and the fix."""


def private_dir(path: str | os.PathLike[str]) -> Path:
    """`path` as a directory, every part of it created here made 0700 (parts that exist are left
    as they are: checking them is `check_private`'s work, at start)."""
    target = Path(path)
    missing = []
    probe = target
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for part in reversed(missing):
        try:
            part.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process: not ours to change
        os.chmod(part, DIR_MODE)  # mkdir's mode passes through the umask
    return target


def open_append(path: str | os.PathLike[str]) -> int:
    """A file descriptor appending to `path`, a new file made 0600. A file an earlier version
    left readable by others is made 0600 too: its next line is as private as the rest."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
    with contextlib.suppress(OSError):  # not ours to change (another owner): still append
        os.fchmod(fd, FILE_MODE)
    return fd


def check_private(path: str | os.PathLike[str]) -> Path:
    """Create the state directory (0700) if it is missing; UnsafeStateDir if it is owned by
    another user or writable by group or others."""
    directory = private_dir(path)
    try:
        found = directory.stat()
    except OSError as exc:
        raise UnsafeStateDir(f"state directory {directory}: {exc.strerror}") from exc
    if not stat.S_ISDIR(found.st_mode):
        raise UnsafeStateDir(f"state directory {directory} is not a directory")
    mode = stat.S_IMODE(found.st_mode)
    me = os.geteuid()
    shown = f"mode {mode:04o}, owner {_user(found.st_uid)}"
    if found.st_uid != me:
        raise UnsafeStateDir(
            f"state directory {directory} ({shown}) is not owned by {_user(me)}, who runs the "
            "reconciler: its owner could change what the reconciler reads and starts. Fix: "
            f"`chown {me} {directory} && chmod 700 {directory}`, or choose another --state-dir"
        )
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = " and ".join(
            w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit
        )
        raise UnsafeStateDir(
            f"state directory {directory} ({shown}) is writable by {who}: another local "
            "user could plant engine records, restart requests or symlinks in it. "
            f"Fix: `chmod 700 {directory}`"
        )
    return directory


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


_CHUNK = 1 << 20


def atomic_write(
    path: str | os.PathLike[str],
    data: str | bytes | BinaryIO,
    mode: int | None = None,
    *,
    durable: bool = True,
) -> None:
    """Replace `path` with `data` (text, bytes, or a binary file read from where it stands);
    on any error the old file is left as it was.

    `mode` defaults to 0600, whatever the file's mode was (one an earlier version left readable
    by others becomes private when it is next written). `durable=False` skips
    the fsyncs: for a file rewritten so often that losing the latest one to a power cut costs
    nothing (the loop's bulletin); readers still never see half of it.
    """
    target = Path(path)
    private_dir(target.parent)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode if mode is not None else FILE_MODE)
            if isinstance(data, str):
                out.write(data.encode("utf-8"))
            elif isinstance(data, bytes | bytearray | memoryview):
                out.write(data)
            else:
                shutil.copyfileobj(data, out, _CHUNK)  # an archive need not fit in memory
            out.flush()
            if durable:
                os.fsync(out.fileno())  # the data is on disk before the name points at it
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if durable:
        fsync_directory(target.parent)  # ... and the rename itself survives a power loss


def fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)

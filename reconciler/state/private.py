"""The state directory is private: only the user the reconciler runs as may enter it.

It holds what must not leak to other local users (engine logs with prompts and answers, the event
log, the gateway's routes) and what must not be changed by them (the state file, the engines'
records: a forged record points the reconciler at another process). So it is made 0700 and every
file in it 0600, set explicitly (never left to the umask), and a directory that another user owns
or that group or others may write is refused before anything starts: whoever can write it could
plant a record, a restart request or a symlink, and whoever owns it can change its mode back.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path

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

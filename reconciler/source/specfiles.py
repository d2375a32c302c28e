"""Reading one spec file, from disk or from git, without trusting what sits in desired-state/.

Whoever can open a pull request writes these files. A spec must be a regular file (a symbolic
link is followed only to a regular file inside the repository), at most MAX_SPEC_BYTES long, and
reading it must never block: a FIFO or a device is refused from its metadata, before any open,
and the open itself is non-blocking. Every refusal is a Problem on the file's line 1, so it is
reported like any other invalid spec and changes nothing that runs.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from reconciler.core.problems import Problem

MAX_SPEC_BYTES = 1 << 20
"""1 MiB: a spec is a few hundred bytes; a file past this is an accident or an attack."""

GIT_LINK_MODE = 0o120000
"""The mode git records for a symbolic link (its blob holds the link's target)."""

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def problem(display: str, message: str) -> Problem:
    return Problem(display, 1, "", message)


def too_large(display: str, size: int) -> Problem:
    return problem(display, f"{size} bytes: a spec may hold at most {MAX_SPEC_BYTES} bytes (1 MiB)")


def decode(display: str, data: bytes) -> str | Problem:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return problem(display, f"not UTF-8 text: {exc.reason}")


def repository_top(directory: Path) -> Path:
    """The working tree holding `directory` (found by its .git), else the directory itself:
    the boundary a symbolic link may not leave."""
    start = directory.resolve()
    for candidate in (start, *start.parents):
        if (candidate / ".git").exists():
            return candidate
    return start


def read_spec_file(path: Path, boundary: Path, display: str) -> str | Problem:
    """The text of one spec file on disk, or the problem that keeps it from being read."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return problem(display, f"cannot read: {exc.strerror}")
    if stat.S_ISLNK(info.st_mode):
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return problem(display, "a symbolic link that leads nowhere (broken or a loop)")
        if not target.is_relative_to(boundary.resolve()):
            return problem(
                display,
                f"a symbolic link to {target}, outside the repository {boundary}: "
                "only files inside it are read",
            )
        info = os.stat(target)
    refusal = _refusal(display, info)
    if refusal is not None:
        return refusal
    try:
        # O_NONBLOCK: a file swapped for a FIFO after the check above still cannot block us
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        return problem(display, f"cannot read: {exc.strerror}")
    with os.fdopen(fd, "rb") as f:
        refusal = _refusal(display, os.fstat(f.fileno()))
        if refusal is not None:
            return refusal
        data = f.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        return too_large(display, len(data))
    return decode(display, data)


def _refusal(display: str, info: os.stat_result) -> Problem | None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        return problem(display, f"cannot read: {kind}, not a regular file (a spec must be one)")
    if info.st_size > MAX_SPEC_BYTES:
        return too_large(display, info.st_size)
    return None


def link_target(link_path: str, target: str) -> str | None:
    """Where a symbolic link recorded in git points, relative to the repository's top; None when
    it leaves the repository (absolute, or `..` past the top)."""
    if target.startswith("/"):
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        return None
    return joined


def outside_link(display: str, target: str) -> Problem:
    return problem(
        display,
        f"a symbolic link to {target}, which is not a file inside the repository: "
        "only files inside it are read",
    )

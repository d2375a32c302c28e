"""Engine logs: <state_dir>/logs/<id>.log, opened O_APPEND by the engine itself.

The engine writes to that file descriptor directly, so rotation cannot reopen it: at start a log
over the size limit is rotated by renaming (<id>.log.1 .. .N); while the engine runs, an
oversized log is rotated by copy-and-truncate (O_APPEND makes the engine's next write land at
the new end; lines written between the copy and the truncation are lost, the usual copytruncate
trade-off).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
SECRET_FLAGS = frozenset({"--api-key", "--api_key", "--admin-api-key"})


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

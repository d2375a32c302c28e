"""The one way anything in the state directory is written: whole files, atomically and durably.

A reader sees the old file or the new one, never half of either, and after a power loss the new
name points at complete data: temp file in the same directory, fsync, rename, fsync the directory.
Files are 0600 and directories made here 0700 unless told otherwise (private.py says why).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from reconciler.state.private import FILE_MODE, private_dir

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

"""What the loop needs from a source of desired state, whichever kind it is."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from reconciler.core.desired import RawDesiredState
from reconciler.source.repo import Revision


@runtime_checkable
class Source(Protocol):
    """LocalSource (a working tree on this host) and RemoteSource (a clone of a remote branch)."""

    @property
    def directory(self) -> Path:
        """The desired-state directory on disk."""
        ...

    def head_sha(self) -> str | None:
        """The commit that load() reads; cheap enough to poll (reads ref files only)."""
        ...

    def revision(self) -> Revision | None:
        """That commit as the reconciler reports it (None outside git or before a commit)."""
        ...

    def load(self) -> RawDesiredState:
        """The desired state to apply; raises LoadError when it cannot be read at all."""
        ...

    def close(self) -> None: ...

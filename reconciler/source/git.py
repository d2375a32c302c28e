"""The git source's public names in one place, for callers written before the package was split.

New code imports from the modules that define them: repo (repositories, revisions, errors),
local and remote (the two sources, both `protocol.Source`), history, rollback, describe.
"""

from reconciler.source.describe import describe_change, spec_diff, validate_raw
from reconciler.source.history import (
    AppliedRecord,
    HistoryEntry,
    history,
    read_applied,
    render_history,
)
from reconciler.source.load import load_revision_bare, load_tree
from reconciler.source.local import LocalSource
from reconciler.source.protocol import Source
from reconciler.source.remote import CLONE_DIR, GIT_TIMEOUT_S, RemoteSource, SyncResult
from reconciler.source.repo import (
    InvalidRevision,
    NotFound,
    NothingToRollBack,
    Revision,
    SourceError,
    head_commit,
    open_repo,
    relative_dir,
    require_repo,
    resolve,
    revision_of,
    uncommitted,
)
from reconciler.source.rollback import push, rollback

__all__ = [
    "CLONE_DIR",
    "GIT_TIMEOUT_S",
    "AppliedRecord",
    "HistoryEntry",
    "InvalidRevision",
    "LocalSource",
    "NotFound",
    "NothingToRollBack",
    "RemoteSource",
    "Revision",
    "Source",
    "SourceError",
    "SyncResult",
    "describe_change",
    "head_commit",
    "history",
    "load_revision_bare",
    "load_tree",
    "open_repo",
    "push",
    "read_applied",
    "relative_dir",
    "render_history",
    "require_repo",
    "resolve",
    "revision_of",
    "rollback",
    "spec_diff",
    "uncommitted",
    "validate_raw",
]

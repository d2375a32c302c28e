"""A desired-state directory in this host's working tree: what is applied is HEAD, plus a
"dirty" mark when uncommitted edits under the directory are read (or, with `committed_only`,
exactly the HEAD commit)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState, RawDesiredState, ValidationResult
from reconciler.core.engine_args import Catalog
from reconciler.source.commits import describe_change, validate_raw
from reconciler.source.load import (
    LoadError,
    is_spec_path,
    load_directory,
    load_tree,
    with_revision,
)
from reconciler.source.repo import (
    Revision,
    head_commit,
    open_repo,
    ref_sha,
    relative_dir,
    revision_of,
    uncommitted,
)

if TYPE_CHECKING:
    import git


class LocalSource:
    """Desired state from a directory, and the git revision it corresponds to (if any)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        committed_only: bool = False,
        catalog: Catalog | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.committed_only = committed_only
        self.catalog = catalog
        """what each engine takes (engines.registry.catalog()), for the dirty summary"""
        self._repo = open_repo(self.directory)
        self._rel = relative_dir(self._repo, self.directory) if self._repo else None

    @property
    def in_git(self) -> bool:
        return self._repo is not None

    def head_sha(self) -> str | None:
        """HEAD's sha; cheap enough to poll (reads ref files, runs no git command)."""
        return ref_sha(self._repo) if self._repo is not None else None

    def revision(self) -> Revision | None:
        """HEAD, marked dirty when uncommitted edits under the directory are what load() reads."""
        commit = head_commit(self._repo) if self._repo is not None else None
        if commit is None:
            return None
        if self.committed_only:
            return revision_of(commit)
        changed = self._changed_specs()
        if not changed:
            return revision_of(commit)
        return revision_of(commit, dirty=True, dirty_summary=self._dirty_summary(commit, changed))

    def load(self) -> RawDesiredState:
        """The working tree (or HEAD's commit when committed_only).

        `revision` is HEAD's sha when what was read is exactly a commit, None when the working
        tree has uncommitted edits (revision() then says which commit they are on).
        """
        if self.committed_only:
            if self._repo is None or self._rel is None:
                raise LoadError(f"{self.directory}: not inside a git repository")
            return load_tree(self._repo, self._rel, "HEAD", str(self.directory))
        raw = load_directory(self.directory)
        commit = head_commit(self._repo) if self._repo is not None else None
        if commit is None or self._changed_specs():
            return raw
        return with_revision(raw, commit.hexsha)

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()

    def _changed_specs(self) -> list[str]:
        assert self._repo is not None and self._rel is not None
        return [p for p in uncommitted(self._repo, self._rel) if is_spec_path(p)]

    def _dirty_summary(self, commit: git.Commit, changed: list[str]) -> str:
        """The spec-level effect of the edits; the changed files when either side is invalid."""
        assert self._repo is not None and self._rel is not None
        files = f"uncommitted: {', '.join(changed)}"
        try:
            committed = validate_raw(load_tree(self._repo, self._rel, commit.hexsha), self.catalog)
        except LoadError:  # the directory is new: everything in it is an addition
            committed = ValidationResult(DesiredState({}, ClusterSpec()), [])
        try:
            edited = validate_raw(load_directory(self.directory), self.catalog).desired
        except LoadError:
            edited = None
        if committed.desired is None or edited is None:
            return files
        return f"{describe_change(committed.desired, edited)} ({files})"

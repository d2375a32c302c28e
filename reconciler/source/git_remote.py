"""A branch of a remote repository, cloned under the state directory and moved only by
fast-forward: a force-push or diverged history is reported and not applied until an operator
accepts it (`allow_force_push`, or `sync(force=True)` once)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.core.desired import RawDesiredState
from reconciler.source.load import LoadError, load_tree
from reconciler.source.repo import (
    Revision,
    SourceError,
    git_stderr,
    head_commit,
    redact_url,
    ref_sha,
    revision_of,
    sha_of,
)

if TYPE_CHECKING:
    import git

CLONE_DIR = "repo"
"""RemoteSource's clone lives in <state_dir>/repo."""
GIT_TIMEOUT_S = 120.0
"""A hung remote must not hang the controller: network commands are killed after this."""
_NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0"}  # a daemon has nobody to type a password


@dataclass(frozen=True)
class SyncResult:
    changed: bool
    """the checked-out commit moved"""
    old: str | None
    new: str | None
    """the remote's commit (also when refused)"""
    refused: str | None = None
    """why the remote was not applied (force-push or diverged history)"""
    forced: bool = False
    """history was rewritten and accepted (allow_force_push or sync(force=True))"""


class RemoteSource:
    """A clone of `url`'s `branch`, moved only by fast-forward unless told otherwise."""

    def __init__(
        self,
        url: str,
        branch: str = "main",
        path: str = "desired-state",
        *,
        workdir: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        allow_force_push: bool = False,
        timeout_s: float = GIT_TIMEOUT_S,
    ) -> None:
        if workdir is not None:
            self.workdir = Path(workdir)
        elif state_dir is not None:
            self.workdir = Path(state_dir) / CLONE_DIR
        else:
            raise TypeError("RemoteSource needs workdir= or state_dir=")
        self.url = url
        self.branch = branch
        self.path = path.strip("/") or "."
        self.allow_force_push = allow_force_push
        self.timeout_s = timeout_s
        self._repo: git.Repo | None = None

    @property
    def shown_url(self) -> str:
        """The URL as messages show it: without credentials."""
        return redact_url(self.url, keep_path=True)

    @property
    def directory(self) -> Path:
        """The desired-state directory inside the clone (for Settings.desired_dir)."""
        return self.workdir / self.path

    def sync(self, force: bool = False) -> SyncResult:
        """Fetch the branch and fast-forward to it; refuse rewritten history unless allowed.

        Raises SourceError when the remote cannot be reached or the clone cannot be moved.
        One RemoteSource is meant for one thread (GitPython's Repo is not thread-safe).
        """
        import git

        try:
            return self._sync(force)
        except git.GitCommandError as exc:
            raise SourceError(f"{self.workdir}: git failed: {git_stderr(exc)}") from exc

    def _sync(self, force: bool) -> SyncResult:
        repo = self._open()
        if repo is None:
            repo = self._clone()
            return SyncResult(True, None, sha_of(head_commit(repo)))
        self._fetch(repo)
        new = self.remote_sha()
        if new is None:
            raise SourceError(f"{self.shown_url}: branch {self.branch} not found")
        if self._on_other_branch(repo):  # the operator configured another branch: follow it
            old = sha_of(head_commit(repo))
            repo.git.checkout("--force", "-B", self.branch, new)
            return SyncResult(old != new, old, new)
        old = sha_of(head_commit(repo))
        if old == new:
            return SyncResult(False, old, new)
        if old is None or repo.is_ancestor(old, new):  # type: ignore[arg-type]  # stub says Commit; GitPython hands any rev to git merge-base
            repo.head.reset(new, index=True, working_tree=True)
            return SyncResult(True, old, new)
        reason = self._rewrite_reason(repo, old, new)
        if not (force or self.allow_force_push):
            return SyncResult(False, old, new, refused=reason)
        repo.head.reset(new, index=True, working_tree=True)
        return SyncResult(True, old, new, forced=True)

    def head_sha(self) -> str | None:
        """The checked-out (applied) commit; None before the first sync."""
        repo = self._open()
        return ref_sha(repo) if repo is not None else None

    def remote_sha(self) -> str | None:
        """The remote branch as last fetched (may be ahead of head_sha, or refused)."""
        repo = self._open()
        return ref_sha(repo, f"refs/remotes/origin/{self.branch}") if repo is not None else None

    def revision(self) -> Revision | None:
        repo = self._open()
        commit = head_commit(repo) if repo is not None else None
        return revision_of(commit) if commit is not None else None

    def load(self) -> RawDesiredState:
        """Desired state at the checked-out commit, read from git objects (not the files)."""
        repo = self._open()
        if repo is None or head_commit(repo) is None:
            raise LoadError(f"{self.workdir}: no clone yet (sync first)")
        return load_tree(repo, self.path, "HEAD", str(self.directory))

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None

    def _open(self) -> git.Repo | None:
        import git

        if self._repo is None and (self.workdir / ".git").exists():
            try:
                self._repo = git.Repo(self.workdir)
            except git.InvalidGitRepositoryError as exc:
                raise SourceError(f"{self.workdir}: not a usable clone ({exc})") from exc
            self._use_configured_url(self._repo)
        return self._repo

    def _use_configured_url(self, repo: git.Repo) -> None:
        """The configuration is authoritative; ancestry checks still guard a different repo."""
        if "origin" not in [r.name for r in repo.remotes]:
            repo.create_remote("origin", self.url)
        elif repo.remotes.origin.url != self.url:
            repo.remotes.origin.set_url(self.url)

    def _clone(self) -> git.Repo:
        import git

        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise SourceError(f"{self.workdir}: exists and is not a clone; move it away")
        self.workdir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._repo = git.Repo.clone_from(
                self.url,
                self.workdir,
                branch=self.branch,
                env=_NO_PROMPT,
                kill_after_timeout=self.timeout_s,
            )
        except git.GitCommandError as exc:
            raise SourceError(f"cannot clone {self.shown_url}: {git_stderr(exc)}") from exc
        return self._repo

    def _fetch(self, repo: git.Repo) -> None:
        import git

        # The remote-tracking ref may move any way; only the checked-out branch is guarded.
        refspec = f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}"
        try:
            with repo.git.custom_environment(**_NO_PROMPT):
                repo.git.fetch("--quiet", "origin", refspec, kill_after_timeout=self.timeout_s)
        except git.GitCommandError as exc:
            raise SourceError(f"cannot fetch {self.shown_url}: {git_stderr(exc)}") from exc

    def _on_other_branch(self, repo: git.Repo) -> bool:
        try:
            return repo.active_branch.name != self.branch
        except TypeError:  # detached HEAD
            return True

    def _rewrite_reason(self, repo: git.Repo, old: str, new: str) -> str:
        if repo.is_ancestor(new, old):  # type: ignore[arg-type]  # stub says Commit; GitPython hands any rev to git merge-base
            how = f"was reset back to {new[:12]}, behind the applied {old[:12]}"
        else:
            how = f"({new[:12]}) no longer contains the applied {old[:12]}"
        return (
            f"{self.shown_url} {self.branch} {how}: history was rewritten (force-push). "
            f"Not applied: push a commit on top of {old[:12]} (a revert), or accept the remote "
            f"(allow_force_push)."
        )

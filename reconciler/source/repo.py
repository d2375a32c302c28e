"""Repositories and revisions: the git helpers every part of the source package shares, the one
URL redactor (credentials in URLs never reach logs, messages or backups), and what the loop
needs from a source of desired state, whichever kind it is.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import urlsplit

from reconciler.core.desired import Problem, RawDesiredState

HIDDEN = "***"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str, *, keep_path: bool = False) -> str:
    """`https://user:token@host:8443/x?k=v` -> `https://host:8443`, or with `keep_path`
    `https://***@host:8443/x?***`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not parseable as a URL (a bad port...): show nothing of it
        return HIDDEN
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    origin = f"{parts.scheme}://{host}{port}" if parts.scheme else host
    if not keep_path:
        return origin
    user = f"{HIDDEN}@" if "@" in parts.netloc else ""
    query = f"?{HIDDEN}" if parts.query else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}{query}"


def redact_text(text: str) -> str:
    """Every URL in `text` with its credentials hidden (paths kept)."""
    return _URL.sub(lambda m: redact_url(m.group(0), keep_path=True), text)


if TYPE_CHECKING:
    import git


class SourceError(Exception):
    """A repository or revision cannot be used; the message is meant for an operator."""


class NotFound(SourceError):
    """A repository, revision or directory that does not exist (a usage error, exit 2)."""


class InvalidRevision(SourceError):
    """The desired state at a revision does not validate."""

    def __init__(self, rev: str, problems: list[Problem], consequence: str = "") -> None:
        errors = [p for p in problems if p.is_error]
        message = f"desired state at {rev} is invalid ({len(errors)} error(s))"
        super().__init__(f"{message}: {consequence}" if consequence else message)
        self.rev = rev
        self.problems = problems


class NothingToRollBack(SourceError):
    """The directory already equals the target revision's."""


@dataclass(frozen=True)
class Revision:
    """A commit as the reconciler reports it."""

    sha: str
    dirty: bool = False
    """uncommitted edits under the desired-state directory are part of what is applied"""
    dirty_summary: str = ""
    message: str = ""
    author: str = ""
    time: datetime | None = None
    """author time, in the author's time zone"""

    @property
    def short(self) -> str:
        return self.sha[:12]

    @property
    def subject(self) -> str:
        return self.message.splitlines()[0] if self.message else ""

    def label(self) -> str:
        """`abc123def456` or `abc123def456+dirty`: what status pages show."""
        return self.short + ("+dirty" if self.dirty else "")


def open_repo(path: str | os.PathLike[str]) -> git.Repo | None:
    """The repository holding `path` (searching upwards), or None outside any repository."""
    start = Path(path)
    while not start.exists() and start != start.parent:
        start = start.parent  # a directory not created yet still belongs to its repository
    if not _may_be_in_git(start):
        return None  # without importing GitPython (~30 ms) and running `git version` twice
    import git

    try:
        return git.Repo(start, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def _may_be_in_git(start: Path) -> bool:
    """False when GitPython's upward search from `start` cannot find a repository: no
    directory on the way holds a `.git` entry or is itself a git directory (HEAD)."""
    if os.environ.get("GIT_DIR"):
        return True  # git's own override: GitPython follows it wherever `start` is
    here = Path(os.path.abspath(start))  # as GitPython walks: absolute, symlinks kept
    return any((d / ".git").exists() or (d / "HEAD").exists() for d in (here, *here.parents))


def require_repo(path: str | os.PathLike[str]) -> git.Repo:
    repo = open_repo(path)
    if repo is None:
        raise NotFound(f"{path}: not inside a git repository")
    return repo


def relative_dir(repo: git.Repo, path: str | os.PathLike[str]) -> str:
    """`path` relative to the working tree's top, POSIX style ("." for the top itself)."""
    if repo.working_tree_dir is None:
        raise NotFound(f"{repo.git_dir}: a bare repository has no working tree")
    top = Path(repo.working_tree_dir).resolve()
    try:
        return Path(path).resolve().relative_to(top).as_posix()
    except ValueError as exc:
        raise NotFound(f"{path}: not inside the working tree {top}") from exc


def head_commit(repo: git.Repo) -> git.Commit | None:
    """HEAD's commit; None in a repository without commits."""
    try:
        return repo.head.commit
    except ValueError:  # an unborn branch
        return None


def resolve(repo: git.Repo, rev: str) -> git.Commit:
    import git

    try:
        commit = repo.commit(rev)
        commit.tree  # noqa: B018 - reading the tree is what proves the commit exists
    except (git.BadName, git.BadObject, ValueError) as exc:
        raise NotFound(f"{rev}: unknown revision") from exc
    return commit


def ref_sha(repo: git.Repo, ref: str = "HEAD") -> str | None:
    """A ref's sha read from the ref files alone: no git process, safe to poll from a thread."""
    from git.refs.symbolic import SymbolicReference

    with contextlib.suppress(ValueError, OSError):  # no commit yet, or no such ref
        return SymbolicReference.dereference_recursive(repo, ref)
    return None


def sha_of(commit: git.Commit | None) -> str | None:
    return commit.hexsha if commit is not None else None


def subtree(commit: git.Commit, rel: str) -> git.Tree | git.Blob | git.Submodule | None:
    """The tree (or blob) at `rel` in a commit; None when nothing is there."""
    if rel == ".":
        return commit.tree
    try:
        return commit.tree / rel
    except KeyError:
        return None


def revision_of(commit: git.Commit, dirty: bool = False, dirty_summary: str = "") -> Revision:
    author = f"{commit.author.name} <{commit.author.email}>"
    message = str(commit.message).strip()
    return Revision(commit.hexsha, dirty, dirty_summary, message, author, commit.authored_datetime)


def uncommitted(repo: git.Repo, rel: str) -> list[str]:
    """Paths under `rel` (relative to it) that differ from HEAD: staged, unstaged or untracked.

    Without git's optional locks: a plain `git status` refreshes the index and holds
    `index.lock` meanwhile, and an operator's `git commit` at that moment fails with "Another
    git process seems to be running". The loop and the API run this in the background."""
    text = repo.git.status(
        "--porcelain=v1",
        "-z",
        "--untracked-files=all",
        "--no-renames",
        "--",
        rel,
        env={"GIT_OPTIONAL_LOCKS": "0"},
    )
    prefix = "" if rel == "." else rel + "/"
    paths = [entry[3:] for entry in text.split("\0") if len(entry) > 3]
    return sorted(p[len(prefix) :] for p in paths if p.startswith(prefix))


def git_stderr(exc: Exception, one_line: bool = True) -> str:
    """What git said (a GitCommandError's stderr), without credentials."""
    text = str(getattr(exc, "stderr", "") or exc).strip()
    text = text.removeprefix("stderr:").strip().strip("'").strip()
    return redact_text(" ".join(text.split()) if one_line else text)


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

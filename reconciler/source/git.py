"""Follow desired state in git, as Flux and Argo CD users expect; history, rollback, spec diff.

Two sources, one interface (`head_sha()`, `revision()`, `load()`):
- `LocalSource`: the desired-state directory sits in a git working tree. What is applied is HEAD,
  plus a "dirty" mark when uncommitted edits under the directory are read (or, with
  `committed_only`, exactly the HEAD commit).
- `RemoteSource`: a clone of a remote branch kept under the state directory. `sync()` fetches and
  fast-forwards only: a force-push or diverged history is reported and not applied until an
  operator accepts it (`allow_force_push`, or `sync(force=True)` once).

All git work goes through GitPython (its object database, or its `repo.git` command wrapper).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.core.desired import DesiredState, RawDesiredState, ValidationResult
from reconciler.core.diff import diff_cluster, diff_desired, render_diff, summary
from reconciler.core.problems import Problem
from reconciler.core.validate import validate
from reconciler.source.load import (
    CLUSTER_FILE,
    MODELS_DIR,
    LoadError,
    _assemble,
    _tree_files,
    load_directory,
)

if TYPE_CHECKING:
    import git

CLONE_DIR = "repo"
"""RemoteSource's clone lives in <state_dir>/repo."""
GIT_TIMEOUT_S = 120.0
"""A hung remote must not hang the controller: network commands are killed after this."""
_NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0"}  # a daemon has nobody to type a password


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


# ---- repositories and revisions --------------------------------------------------------------


def open_repo(path: str | os.PathLike[str]) -> git.Repo | None:
    """The repository holding `path` (searching upwards), or None outside any repository."""
    import git

    start = Path(path)
    while not start.exists() and start != start.parent:
        start = start.parent  # a directory not created yet still belongs to its repository
    try:
        return git.Repo(start, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


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


def _head_sha(repo: git.Repo) -> str | None:
    return _ref_sha(repo, "HEAD")


def _ref_sha(repo: git.Repo, ref: str) -> str | None:
    """A ref's sha read from the ref files alone: no git process, safe to poll from a thread."""
    from git.refs.symbolic import SymbolicReference

    with contextlib.suppress(ValueError, OSError):  # no commit yet, or no such ref
        return SymbolicReference.dereference_recursive(repo, ref)
    return None


def revision_of(commit: git.Commit, dirty: bool = False, dirty_summary: str = "") -> Revision:
    author = f"{commit.author.name} <{commit.author.email}>"
    message = str(commit.message).strip()
    return Revision(commit.hexsha, dirty, dirty_summary, message, author, commit.authored_datetime)


def load_tree(repo: git.Repo, rel_dir: str, rev: str, root: str | None = None) -> RawDesiredState:
    """Desired state at `rev` read from the object database: works in bare repositories too.

    `rel_dir` is relative to the repository's top; `root` is what RawDesiredState.root says.
    """
    commit = _resolve_for_load(repo, rev)
    rel = rel_dir.strip("/") or "."
    tree = _subtree(commit, rel)
    if tree is None:
        raise LoadError(f"{rel}: not present at revision {rev}")
    if tree.type != "tree":
        raise LoadError(f"{rel}: not a directory at revision {rev}")
    return _assemble(root or rel, commit.hexsha, _tree_files(tree, rel))


def load_revision_bare(
    repo_path: str | os.PathLike[str], rel_dir: str, rev: str
) -> RawDesiredState:
    """load_revision for a repository given by path, bare or not (a pre-receive hook's)."""
    import git

    try:
        repo = git.Repo(repo_path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise LoadError(f"{repo_path}: not a git repository") from exc
    with contextlib.closing(repo):
        return load_tree(repo, rel_dir, rev)


def _resolve_for_load(repo: git.Repo, rev: str) -> git.Commit:
    try:
        return resolve(repo, rev)
    except SourceError as exc:
        raise LoadError(str(exc)) from exc


def _subtree(commit: git.Commit, rel: str) -> Any:
    if rel == ".":
        return commit.tree
    try:
        return commit.tree / rel
    except KeyError:
        return None


def validate_raw(raw: RawDesiredState) -> ValidationResult:
    """What the reconciler would say about `raw`, minus the host-only model-file check."""
    from reconciler.engines.registry import catalog

    return validate(raw, catalog=catalog())


def _is_spec_path(inner: str) -> bool:
    """Paths (relative to the desired-state directory) that load_directory reads."""
    if inner == CLUSTER_FILE:
        return True
    head, _, name = inner.partition("/")
    return (
        head == MODELS_DIR
        and "/" not in name
        and name.endswith((".yaml", ".yml"))
        and not name.startswith(".")
    )


def uncommitted(repo: git.Repo, rel: str) -> list[str]:
    """Paths under `rel` (relative to it) that differ from HEAD: staged, unstaged or untracked."""
    text = repo.git.status(
        "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames", "--", rel
    )
    prefix = "" if rel == "." else rel + "/"
    paths = [entry[3:] for entry in text.split("\0") if len(entry) > 3]
    return sorted(p[len(prefix) :] for p in paths if p.startswith(prefix))


# ---- local: the directory is in this machine's working tree ----------------------------------


class LocalSource:
    """Desired state from a directory, and the git revision it corresponds to (if any)."""

    def __init__(self, directory: str | os.PathLike[str], committed_only: bool = False) -> None:
        self.directory = Path(directory)
        self.committed_only = committed_only
        self._repo = open_repo(self.directory)
        self._rel = relative_dir(self._repo, self.directory) if self._repo else None

    @property
    def in_git(self) -> bool:
        return self._repo is not None

    def head_sha(self) -> str | None:
        """HEAD's sha; cheap enough to poll (reads ref files, runs no git command)."""
        return _head_sha(self._repo) if self._repo is not None else None

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
        return _with_revision(raw, commit.hexsha)

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()

    def _changed_specs(self) -> list[str]:
        assert self._repo is not None and self._rel is not None
        return [p for p in uncommitted(self._repo, self._rel) if _is_spec_path(p)]

    def _dirty_summary(self, commit: git.Commit, changed: list[str]) -> str:
        """The spec-level effect of the edits; the changed files when either side is invalid."""
        assert self._repo is not None and self._rel is not None
        files = f"uncommitted: {', '.join(changed)}"
        try:
            committed = validate_raw(load_tree(self._repo, self._rel, commit.hexsha))
        except LoadError:  # the directory is new: everything in it is an addition
            committed = ValidationResult(DesiredState({}, _default_cluster()), [])
        try:
            edited = validate_raw(load_directory(self.directory)).desired
        except LoadError:
            edited = None
        if committed.desired is None or edited is None:
            return files
        return f"{describe_change(committed.desired, edited)} ({files})"


def _default_cluster() -> Any:
    from reconciler.core.spec import ClusterSpec

    return ClusterSpec()


def _with_revision(raw: RawDesiredState, sha: str) -> RawDesiredState:
    return replace(raw, revision=sha)


# ---- remote: a branch of a remote repository, cloned under the state directory ---------------


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
        if workdir is None and state_dir is None:
            raise TypeError("RemoteSource needs workdir= or state_dir=")
        self.url = url
        self.branch = branch
        self.path = path.strip("/") or "."
        self.workdir = Path(workdir) if workdir is not None else Path(state_dir) / CLONE_DIR
        self.allow_force_push = allow_force_push
        self.timeout_s = timeout_s
        self._repo: git.Repo | None = None

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
            raise SourceError(f"{self.workdir}: git failed: {_stderr(exc)}") from exc

    def _sync(self, force: bool) -> SyncResult:
        repo = self._open()
        if repo is None:
            repo = self._clone()
            return SyncResult(True, None, _sha(head_commit(repo)))
        self._fetch(repo)
        new = self.remote_sha()
        if new is None:
            raise SourceError(f"{_redact(self.url)}: branch {self.branch} not found")
        if self._on_other_branch(repo):  # the operator configured another branch: follow it
            old = _sha(head_commit(repo))
            repo.git.checkout("--force", "-B", self.branch, new)
            return SyncResult(old != new, old, new)
        old = _sha(head_commit(repo))
        if old == new:
            return SyncResult(False, old, new)
        if old is None or repo.is_ancestor(old, new):
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
        return _head_sha(repo) if repo is not None else None

    def remote_sha(self) -> str | None:
        """The remote branch as last fetched (may be ahead of head_sha, or refused)."""
        repo = self._open()
        return _ref_sha(repo, f"refs/remotes/origin/{self.branch}") if repo is not None else None

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
            raise SourceError(f"cannot clone {_redact(self.url)}: {_stderr(exc)}") from exc
        return self._repo

    def _fetch(self, repo: git.Repo) -> None:
        import git

        # The remote-tracking ref may move any way; only the checked-out branch is guarded.
        refspec = f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}"
        try:
            with repo.git.custom_environment(**_NO_PROMPT):
                repo.git.fetch("--quiet", "origin", refspec, kill_after_timeout=self.timeout_s)
        except git.GitCommandError as exc:
            raise SourceError(f"cannot fetch {_redact(self.url)}: {_stderr(exc)}") from exc

    def _on_other_branch(self, repo: git.Repo) -> bool:
        try:
            return repo.active_branch.name != self.branch
        except TypeError:  # detached HEAD
            return True

    def _rewrite_reason(self, repo: git.Repo, old: str, new: str) -> str:
        if repo.is_ancestor(new, old):
            how = f"was reset back to {new[:12]}, behind the applied {old[:12]}"
        else:
            how = f"({new[:12]}) no longer contains the applied {old[:12]}"
        return (
            f"{_redact(self.url)} {self.branch} {how}: history was rewritten (force-push). "
            f"Not applied: push a commit on top of {old[:12]} (a revert), or accept the remote "
            f"(allow_force_push)."
        )


def _sha(commit: git.Commit | None) -> str | None:
    return commit.hexsha if commit is not None else None


def _redact(url: str) -> str:
    """https://user:token@host/x -> https://***@host/x: credentials never reach logs."""
    return re.sub(r"(?<=://)[^/@]+@", "***@", url)


def _stderr(exc: Any) -> str:
    text = str(getattr(exc, "stderr", "") or exc).strip()
    text = text.removeprefix("stderr:").strip().strip("'").strip()
    return _redact(" ".join(text.split()))


# ---- spec-level descriptions -----------------------------------------------------------------


def describe_change(base: DesiredState | None, head: DesiredState) -> str:
    """One line: reconciler.core.diff.summary, plus priority moves and cluster fields."""
    changes = diff_desired(base, head)
    parts = [summary(changes)]
    moves = [
        f"{c.model} {f.before} -> {f.after}"
        for c in changes
        for f in c.fields
        if f.field == "priority"
    ]
    if moves:
        parts.append(f"priority {', '.join(moves)}")
    cluster = sorted({f.field.split(".")[0] for f in diff_cluster(base, head)})
    if cluster and base is not None:
        parts.append(f"cluster ({', '.join(cluster)})")
    return "; ".join(parts)


def spec_diff(directory: str | os.PathLike[str], base: str, head: str) -> str:
    """The spec-level diff between two revisions; InvalidRevision when one does not validate."""
    repo = require_repo(directory)
    with contextlib.closing(repo):
        rel = relative_dir(repo, directory)
        before = _valid_at(repo, rel, base, str(directory))
        after = _valid_at(repo, rel, head, str(directory))
    return render_diff(diff_desired(before, after), diff_cluster(before, after))


def _valid_at(repo: git.Repo, rel: str, rev: str, root: str) -> DesiredState:
    try:
        raw = load_tree(repo, rel, rev, root)
    except LoadError as exc:
        raise NotFound(str(exc)) from exc
    result = validate_raw(raw)
    if result.desired is None:
        raise InvalidRevision(rev, result.problems)
    return result.desired


# ---- history ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    revision: Revision
    status: str
    """applied | invalid (skipped) | superseded (valid, a newer one was applied) | pending"""
    summary: str
    current: bool = False
    """the revision the state file says is applied now"""
    problems: tuple[Problem, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        r = self.revision
        return {
            "sha": r.sha,
            "author": r.author,
            "time": r.time.isoformat() if r.time else None,
            "subject": r.subject,
            "message": r.message,
            "status": self.status,
            "current": self.current,
            "summary": self.summary,
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass(frozen=True)
class AppliedRecord:
    """What this host applied: the state file's revision, and the 'applied' events."""

    current: str | None = None
    current_dirty: bool = False
    revisions: tuple[str, ...] = ()
    """newest last, without repeats"""


MAX_APPLIED_LOOKUPS = 200
"""Applied revisions traced back to the commit that set their content, newest first."""


def read_applied(state_dir: str | os.PathLike[str]) -> AppliedRecord:
    """The applied revisions recorded under a state directory; empty when there is none."""
    from reconciler.state.paths import EVENTS_FILE, STATE_FILE
    from reconciler.state.statefile import CorruptState, read_state

    base = Path(state_dir)
    try:
        state = read_state(base / STATE_FILE)
    except (CorruptState, OSError):
        state = None
    seen: dict[str, None] = {}
    for sha in _applied_events(base / EVENTS_FILE):
        seen.pop(sha, None)
        seen[sha] = None
    current = state.revision if state and _is_sha(state.revision) else None
    if current:
        seen.pop(current, None)
        seen[current] = None
    return AppliedRecord(current, bool(state and state.revision_dirty), tuple(seen))


def _applied_events(path: Path) -> Iterator[str]:
    import json

    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a torn last line from a crash: the rest still counts
        if isinstance(event, dict) and event.get("kind") == "applied":
            revision = event.get("revision")
            if _is_sha(revision):
                yield revision


def _is_sha(value: object) -> bool:
    """Only object names reach git commands from these files, never options or ranges."""
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", value) is not None


class _Validated:
    """Validation results per desired-state tree: a tree seen twice is validated once."""

    def __init__(self, repo: git.Repo, rel: str, root: str) -> None:
        self.repo, self.rel, self.root = repo, rel, root
        self._cache: dict[str, ValidationResult | None] = {}

    def at(self, commit: git.Commit) -> ValidationResult | None:
        """The result at `commit`; None when the directory does not exist there."""
        tree = _subtree(commit, self.rel)
        key = tree.hexsha if tree is not None else ""
        if key not in self._cache:
            self._cache[key] = self._validate(commit) if tree is not None else None
        return self._cache[key]

    def _validate(self, commit: git.Commit) -> ValidationResult:
        try:
            raw = load_tree(self.repo, self.rel, commit.hexsha, self.root)
        except LoadError as exc:
            return ValidationResult(None, [Problem(self.rel, 1, "", str(exc))])
        return validate_raw(raw)


def history(
    directory: str | os.PathLike[str], limit: int = 20, applied: AppliedRecord | None = None
) -> list[HistoryEntry]:
    """Commits that touched the directory, newest first, with their effect and fate."""
    repo = require_repo(directory)
    with contextlib.closing(repo):
        rel = relative_dir(repo, directory)
        if head_commit(repo) is None:
            return []
        commits = list(repo.iter_commits("HEAD", paths=rel, max_count=limit))
        checks = _Validated(repo, rel, str(directory))
        record = applied or AppliedRecord()
        applied_shas = _applied_in(repo, rel, record.revisions, {c.hexsha for c in commits})
        current = _touching(repo, rel, record.current) if record.current else None
        entries = []
        newer_applied = False
        for commit in commits:
            result = checks.at(commit)
            entry = _entry(repo, checks, commit, result, commit.hexsha in applied_shas)
            if entry.status == "pending" and newer_applied:
                entry = replace(entry, status="superseded")
            if entry.status == "applied":
                newer_applied = True
            if commit.hexsha == current:
                entry = replace(entry, current=True)
            entries.append(entry)
        return entries


def _entry(
    repo: git.Repo,
    checks: _Validated,
    commit: git.Commit,
    result: ValidationResult | None,
    was_applied: bool,
) -> HistoryEntry:
    revision = revision_of(commit)
    if result is None:  # the reconciler cannot load a missing directory: it keeps the last valid
        gone = Problem(checks.rel, 1, "", f"{checks.rel} does not exist at this revision")
        return HistoryEntry(revision, "invalid", f"removed {checks.rel}", problems=(gone,))
    if result.desired is None:
        errors = tuple(result.errors)
        text = f"invalid, {len(errors)} error(s): {errors[0]}" if errors else "invalid"
        return HistoryEntry(revision, "invalid", text, problems=errors)
    base, base_sha = _last_valid_before(repo, checks, commit)
    text = describe_change(base, result.desired)
    if base_sha is not None:
        text = f"{text} (against the last valid {base_sha[:12]})"
    return HistoryEntry(revision, "applied" if was_applied else "pending", text)


LAST_VALID_SEARCH = 50
"""How far back an effect is measured when a commit's parent was invalid."""


def _last_valid_before(
    repo: git.Repo, checks: _Validated, commit: git.Commit
) -> tuple[DesiredState | None, str | None]:
    """What the commit changes: its parent's desired state, or when that was invalid the last
    valid one before it (whose sha is returned then; None means "the parent")."""
    if not commit.parents:
        return None, None
    ancestors = repo.iter_commits(commit.parents[0], paths=checks.rel, max_count=LAST_VALID_SEARCH)
    for i, ancestor in enumerate(ancestors):  # the first one holds the parent's content
        result = checks.at(ancestor)
        if result is None:
            return None, None  # the directory did not exist yet: everything is added
        if result.desired is not None:
            return result.desired, None if i == 0 else ancestor.hexsha
    return None, None


def _touching(repo: git.Repo, rel: str, sha: str) -> str | None:
    """The commit that gave `sha` its desired-state content (the last one touching `rel`)."""
    import git

    try:
        found = next(repo.iter_commits(sha, paths=rel, max_count=1), None)
    except (git.GitCommandError, ValueError):
        return None  # not in this repository (another clone, or history rewritten since)
    return found.hexsha if found is not None else None


def _applied_in(repo: git.Repo, rel: str, revisions: Iterable[str], listed: set[str]) -> set[str]:
    """The listed commits whose content was applied, directly or through a later commit."""
    found = set()
    for sha in list(revisions)[-MAX_APPLIED_LOOKUPS:]:
        touching = sha if sha in listed else _touching(repo, rel, sha)
        if touching in listed:
            found.add(touching)
    return found


def render_history(entries: list[HistoryEntry], dirty: bool = False) -> str:
    """Two lines per commit: sha, status, time, author, subject; then its effect."""
    if not entries:
        return "no commits touch the desired-state directory"
    lines = []
    for e in entries:
        r = e.revision
        status = e.status + (" (current" + (", +dirty)" if dirty else ")") if e.current else "")
        when = r.time.strftime("%Y-%m-%d %H:%M") if r.time else ""
        lines.append(f"{r.short}  {status:<18} {when}  {r.author}  {r.subject}")
        lines.append(f"{'':14}{e.summary}")
    return "\n".join(lines)


# ---- rollback: a new commit whose directory equals an older revision's ------------------------


def rollback(
    directory: str | os.PathLike[str], rev: str, message: str | None = None
) -> tuple[Revision, Revision]:
    """Commit the directory as it was at `rev` on top of HEAD; (new commit, target revision).

    History is never rewritten. The working tree and index under the directory move with HEAD,
    like a checkout; staged changes elsewhere stay staged and out of the commit.
    """
    repo = require_repo(directory)
    with contextlib.closing(repo):
        rel = relative_dir(repo, directory)
        head = head_commit(repo)
        if head is None:
            raise SourceError("the repository has no commits to roll back")
        target = resolve(repo, rev)
        try:
            _valid_at(repo, rel, target.hexsha, str(directory))
        except InvalidRevision as exc:
            raise InvalidRevision(rev, exc.problems, "refusing to roll back to it") from None
        _refuse_uncommitted(repo, rel)
        wanted = _subtree(target, rel)
        if wanted is None or wanted.type != "tree":
            raise NotFound(f"{rel}: not a directory at {rev}")
        current = _subtree(head, rel)
        if current is not None and current.binsha == wanted.binsha:
            raise NothingToRollBack(f"{rel} already equals {target.hexsha[:12]}: nothing to do")
        commit = _commit_with_subtree(
            repo, head, rel, wanted.binsha, _rollback_message(rel, target, message)
        )
        _move_head(repo, head, commit)
        return revision_of(commit), revision_of(target)


def _refuse_uncommitted(repo: git.Repo, rel: str) -> None:
    dirty = uncommitted(repo, rel)
    if dirty:
        shown = ", ".join(dirty[:5]) + (", ..." if len(dirty) > 5 else "")
        raise SourceError(f"uncommitted changes under {rel} ({shown}): commit or stash them first")


def _rollback_message(rel: str, target: git.Commit, message: str | None) -> str:
    subject = str(target.message).strip().splitlines()[0] if target.message else ""
    title = f"Roll back {rel} to {target.hexsha[:12]}: {subject}"
    body = f"{rel} is restored as committed in {target.hexsha}."
    return f"{title}\n\n{message.strip()}\n\n{body}\n" if message else f"{title}\n\n{body}\n"


def _commit_with_subtree(
    repo: git.Repo, head: git.Commit, rel: str, subtree: bytes, message: str
) -> git.Commit:
    import git

    parts = [] if rel == "." else rel.split("/")
    root = _with_subtree(repo, head.tree, parts, subtree)
    tree = git.Tree(repo, root)
    return git.Commit.create_from_tree(repo, tree, message, parent_commits=[head], head=False)


def _with_subtree(repo: git.Repo, tree: Any, parts: list[str], subtree: bytes) -> bytes:
    """A copy of `tree` with the directory at `parts` replaced; only trees on the path change."""
    from git.objects.fun import tree_entries_from_data

    if not parts:
        return subtree
    name, rest = parts[0], parts[1:]
    entries = list(tree_entries_from_data(tree.data_stream.read())) if tree is not None else []
    child = next((e for e in entries if e[2] == name and stat.S_ISDIR(e[1])), None)
    child_tree = _tree(repo, child[0]) if child is not None else None
    new_child = _with_subtree(repo, child_tree, rest, subtree)
    entries = [e for e in entries if e[2] != name]
    entries.append((new_child, stat.S_IFDIR, name))
    return _write_tree(repo, entries)


def _tree(repo: git.Repo, binsha: bytes) -> Any:
    import git

    return git.Tree(repo, binsha)


def _write_tree(repo: git.Repo, entries: list[tuple[bytes, int, str]]) -> bytes:
    from git.objects.fun import tree_to_stream
    from gitdb.base import IStream

    # git orders tree entries by name, a directory sorting as if its name ended in "/"
    entries.sort(key=lambda e: (e[2] + "/" if stat.S_ISDIR(e[1]) else e[2]).encode())
    buffer = io.BytesIO()
    tree_to_stream(entries, buffer.write)
    data = buffer.getvalue()
    return repo.odb.store(IStream("tree", len(data), io.BytesIO(data))).binsha


def _move_head(repo: git.Repo, head: git.Commit, commit: git.Commit) -> None:
    """Index and working tree first (as a checkout does), then HEAD, only if nobody moved it."""
    import git

    try:
        repo.git.read_tree("-m", "-u", head.hexsha, commit.hexsha)
    except git.GitCommandError as exc:  # e.g. an unfinished merge: nothing was changed
        raise SourceError(f"cannot update the working tree: {_stderr(exc)}") from exc
    subject = str(commit.message).splitlines()[0]
    try:
        repo.git.update_ref("-m", f"rollback: {subject}", "HEAD", commit.hexsha, head.hexsha)
    except git.GitCommandError as exc:
        repo.git.read_tree("-m", "-u", commit.hexsha, head.hexsha)  # put the files back
        raise SourceError(f"HEAD moved while rolling back; try again ({_stderr(exc)})") from exc


def push(directory: str | os.PathLike[str]) -> str:
    """Push the current branch to its upstream (or origin); returns where it went."""
    import git

    repo = require_repo(directory)
    with contextlib.closing(repo):
        try:
            branch = repo.active_branch
        except TypeError as exc:
            raise SourceError("HEAD is detached: check out a branch to push") from exc
        upstream = branch.tracking_branch()
        remote = upstream.remote_name if upstream else "origin"
        target = upstream.remote_head if upstream else branch.name
        if remote not in [r.name for r in repo.remotes]:
            raise SourceError(f"no upstream and no remote named {remote}: nowhere to push")
        try:
            repo.git.push(remote, f"refs/heads/{branch.name}:refs/heads/{target}")
        except git.GitCommandError as exc:
            raise SourceError(f"push to {remote} {target} failed:\n{_push_error(exc)}") from exc
        return f"{remote}/{target}"


def _push_error(exc: Any) -> str:
    """The remote's own lines (a pre-receive hook's file:line messages) as git printed them."""
    text = str(getattr(exc, "stderr", "") or exc).strip()
    text = text.removeprefix("stderr:").strip().strip("'")
    return _redact(text)

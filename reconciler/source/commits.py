"""History: what a revision holds and what it changes (in the words of specs rather than lines),
the commits that touched the desired-state directory, and their fate on this host.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from reconciler.core.desired import DesiredState, Problem, RawDesiredState, ValidationResult
from reconciler.core.diff import diff_cluster, diff_desired, render_diff, summary
from reconciler.core.engine_args import Catalog
from reconciler.core.events import EventKind
from reconciler.core.spec_checks import validate
from reconciler.engines import registry
from reconciler.source.load import LoadError, load_tree
from reconciler.source.repo import (
    InvalidRevision,
    NotFound,
    Revision,
    head_commit,
    relative_dir,
    require_repo,
    revision_of,
    subtree,
)
from reconciler.state.directory import EVENTS_FILE, STATE_FILE
from reconciler.state.eventlog import read_events
from reconciler.state.reading import CorruptState, read_state

if TYPE_CHECKING:
    import git


def validate_raw(raw: RawDesiredState, catalog: Catalog | None = None) -> ValidationResult:
    """What the reconciler would say about `raw`, minus the host-only model-file check.

    `catalog`: what each engine takes; by default the registry's, so that history, rollback and
    plan diffs check engine flags exactly as `validate` does.
    """
    return validate(raw, catalog=catalog if catalog is not None else registry.catalog())


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


def spec_diff(
    directory: str | os.PathLike[str], base: str, head: str, catalog: Catalog | None = None
) -> str:
    """The spec-level diff between two revisions; InvalidRevision when one does not validate."""
    repo = require_repo(directory)
    with contextlib.closing(repo):
        rel = relative_dir(repo, directory)
        before = valid_at(repo, rel, base, str(directory), catalog)
        after = valid_at(repo, rel, head, str(directory), catalog)
    return render_diff(diff_desired(before, after), diff_cluster(before, after))


def valid_at(
    repo: git.Repo, rel: str, rev: str, root: str, catalog: Catalog | None = None
) -> DesiredState:
    """The desired state at `rev`; NotFound or InvalidRevision when there is none to use."""
    try:
        raw = load_tree(repo, rel, rev, root)
    except LoadError as exc:
        raise NotFound(str(exc)) from exc
    result = validate_raw(raw, catalog)
    if result.desired is None:
        raise InvalidRevision(rev, result.problems)
    return result.desired


if TYPE_CHECKING:
    import git


@dataclass(frozen=True)
class HistoryEntry:
    revision: Revision
    status: str
    """applied | invalid (skipped) | superseded (valid, a newer one was applied) | pending"""
    summary: str
    current: bool = False
    """the revision the state file says is applied now"""
    problems: tuple[Problem, ...] = ()

    def to_dict(self) -> dict[str, object]:
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
    for event in read_events(path):
        if event.kind == EventKind.applied and _is_sha(event.revision):
            yield event.revision


def _is_sha(value: object) -> TypeGuard[str]:
    """Only object names reach git commands from these files, never options or ranges."""
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", value) is not None


class _Validated:
    """Validation results per desired-state tree: a tree seen twice is validated once."""

    def __init__(self, repo: git.Repo, rel: str, root: str, catalog: Catalog | None) -> None:
        self.repo, self.rel, self.root, self.catalog = repo, rel, root, catalog
        self._cache: dict[str, ValidationResult | None] = {}

    def at(self, commit: git.Commit) -> ValidationResult | None:
        """The result at `commit`; None when the directory does not exist there."""
        tree = subtree(commit, self.rel)
        key = tree.hexsha if tree is not None else ""
        if key not in self._cache:
            self._cache[key] = self._validate(commit) if tree is not None else None
        return self._cache[key]

    def _validate(self, commit: git.Commit) -> ValidationResult:
        try:
            raw = load_tree(self.repo, self.rel, commit.hexsha, self.root)
        except LoadError as exc:
            return ValidationResult(None, [Problem(self.rel, 1, "", str(exc))])
        return validate_raw(raw, self.catalog)


def history(
    directory: str | os.PathLike[str],
    limit: int = 20,
    applied: AppliedRecord | None = None,
    catalog: Catalog | None = None,
) -> list[HistoryEntry]:
    """Commits that touched the directory, newest first, with their effect and fate.

    `catalog`: engines.registry.catalog(), so that a commit with an unknown engine flag shows as
    invalid, as the loop would find it."""
    repo = require_repo(directory)
    with contextlib.closing(repo):
        rel = relative_dir(repo, directory)
        if head_commit(repo) is None:
            return []
        commits = list(repo.iter_commits("HEAD", paths=rel, max_count=limit))
        checks = _Validated(repo, rel, str(directory), catalog)
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

"""What a revision holds and what it changes, in the words of specs rather than of lines."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from reconciler.core.catalog import Catalog
from reconciler.core.desired import DesiredState, RawDesiredState, ValidationResult
from reconciler.core.diff import diff_cluster, diff_desired, render_diff, summary
from reconciler.core.validate import validate
from reconciler.engines import registry
from reconciler.source.load import LoadError, load_tree
from reconciler.source.repo import InvalidRevision, NotFound, relative_dir, require_repo

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

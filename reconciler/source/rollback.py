"""Rollback is a new commit whose directory equals an older revision's (history is never
rewritten), and `push` sends it where the branch tracks."""

from __future__ import annotations

import contextlib
import io
import os
import stat
from typing import TYPE_CHECKING

from reconciler.core.engine_args import Catalog
from reconciler.source.commits import valid_at
from reconciler.source.repo import (
    InvalidRevision,
    NotFound,
    NothingToRollBack,
    Revision,
    SourceError,
    git_stderr,
    head_commit,
    relative_dir,
    require_repo,
    resolve,
    revision_of,
    subtree,
    uncommitted,
)

if TYPE_CHECKING:
    import git


def rollback(
    directory: str | os.PathLike[str],
    rev: str,
    message: str | None = None,
    catalog: Catalog | None = None,
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
            valid_at(repo, rel, target.hexsha, str(directory), catalog)
        except InvalidRevision as exc:
            raise InvalidRevision(rev, exc.problems, "refusing to roll back to it") from None
        _refuse_uncommitted(repo, rel)
        wanted = subtree(target, rel)
        if wanted is None or wanted.type != "tree":
            raise NotFound(f"{rel}: not a directory at {rev}")
        current = subtree(head, rel)
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


def _with_subtree(repo: git.Repo, tree: git.Tree | None, parts: list[str], subtree: bytes) -> bytes:
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


def _tree(repo: git.Repo, binsha: bytes) -> git.Tree:
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
        raise SourceError(f"cannot update the working tree: {git_stderr(exc)}") from exc
    subject = str(commit.message).splitlines()[0]
    try:
        repo.git.update_ref("-m", f"rollback: {subject}", "HEAD", commit.hexsha, head.hexsha)
    except git.GitCommandError as exc:
        repo.git.read_tree("-m", "-u", commit.hexsha, head.hexsha)  # put the files back
        raise SourceError(f"HEAD moved while rolling back; try again ({git_stderr(exc)})") from exc


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


def _push_error(exc: git.GitCommandError) -> str:
    """The remote's own lines (a pre-receive hook's file:line messages) as git printed them."""
    return git_stderr(exc, one_line=False)

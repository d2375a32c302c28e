"""Desired state through time: `reconciler history` and `diff` (what each commit did to desired
state, and its fate here), `rollback` (desired state as at a revision, in a new commit, applied
here), and `backup` / `restore` (one archive with the spec repository and the state).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli import command_app
from reconciler.cli.loading import Format, print_problems
from reconciler.cli.options import (
    DEFAULT_DIR,
    DirArg,
    OnceOpt,
    StateDirOpt,
    TimeoutOpt,
    err,
    out,
    resolve_state_dir,
    usage_error,
)
from reconciler.source.archive import BackupError, create_backup, restore_backup
from reconciler.source.commits import history, read_applied, render_history, spec_diff
from reconciler.source.repo import InvalidRevision, NotFound, NothingToRollBack, SourceError
from reconciler.source.rollback import push as push_branch
from reconciler.source.rollback import rollback

app = command_app()


class HistoryFormat(StrEnum):
    text = "text"
    json = "json"


def source_errors(exc: Exception) -> typer.Exit:
    """A missing repository, revision or directory is a usage error (2); the rest fail (1)."""
    if isinstance(exc, NotFound):
        return usage_error(str(exc))
    if isinstance(exc, InvalidRevision):
        print_problems([p for p in exc.problems if p.is_error], Format.text)
    err.print(f"error: {exc}", markup=False)
    return typer.Exit(1)


@app.command("history")
def history_cmd(
    directory: DirArg = Path(DEFAULT_DIR),
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many commits")] = 20,
    fmt: Annotated[HistoryFormat, typer.Option("--format")] = HistoryFormat.text,
    state_dir: StateDirOpt = None,
) -> None:
    """Commits that changed desired state, newest first, and what became of each here.

    Each shows its effect (models added, removed, changed; priority moves) and its fate on this
    host: applied, invalid (skipped), superseded (valid, a newer one was applied) or pending.
    """
    record = read_applied(resolve_state_dir(state_dir))
    try:
        entries = history(directory, limit, record)
    except SourceError as exc:
        raise source_errors(exc) from exc
    if fmt is HistoryFormat.json:
        sys.stdout.write(json.dumps([e.to_dict() for e in entries], indent=2) + "\n")
    else:
        out.print(render_history(entries, record.current_dirty), markup=False)


@app.command("diff")
def diff_cmd(
    base: Annotated[str, typer.Argument(help="the older revision")],
    head: Annotated[str, typer.Argument(help="the newer revision")],
    directory: DirArg = Path(DEFAULT_DIR),
) -> None:
    """The spec-level difference between two revisions: models and fields, not YAML lines."""
    try:
        text = spec_diff(directory, base, head)
    except SourceError as exc:
        raise source_errors(exc) from exc
    out.print(text or "no spec changes", markup=False)


@app.command("rollback")
def rollback_cmd(
    rev: Annotated[str, typer.Argument(help="the revision whose desired state to restore")],
    directory: DirArg = Path(DEFAULT_DIR),
    push: Annotated[bool, typer.Option("--push", help="push the new commit upstream")] = False,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="why: added to the commit message")
    ] = None,
    no_apply: Annotated[
        bool, typer.Option("--no-apply", help="commit (and push) only; apply nothing here")
    ] = False,
    once: OnceOpt = False,
    timeout: TimeoutOpt = 900.0,
    state_dir: StateDirOpt = None,
) -> None:
    """Restore desired state as at REV in a new commit (history is never rewritten); apply it.

    Refused when REV's desired state is invalid or the directory has uncommitted changes.
    """
    try:
        new, target = rollback(directory, rev, message)
    except NothingToRollBack as exc:
        out.print(str(exc), markup=False)
        return
    except SourceError as exc:
        raise source_errors(exc) from exc
    out.print(f"committed {new.short}: {directory} as at {target.short} ({target.subject})")
    push_failed = False
    if push:
        try:
            out.print(f"pushed to {push_branch(directory)}", markup=False)
        except SourceError as exc:
            err.print(f"error: {exc}", markup=False)
            push_failed = True
    if not no_apply:  # at the new commit, so that the state file records what was applied
        # `history` and `diff` must start without the loop: only a rollback that applies loads it
        from reconciler.cli.apply import apply_cmd

        apply_cmd(directory=directory, rev=new.sha, once=once, timeout=timeout, state_dir=state_dir)
    if push_failed:
        raise typer.Exit(1)


@app.command("backup")
def backup_cmd(
    archive: Annotated[Path, typer.Argument(help="the archive to write (.tar.gz)")],
    directory: DirArg = Path(DEFAULT_DIR),
    state_dir: StateDirOpt = None,
) -> None:
    """Write one archive: a git bundle of the spec repository (every ref) and the state."""
    try:
        result = create_backup(archive, directory, resolve_state_dir(state_dir))
    except SourceError as exc:
        raise source_errors(exc) from exc
    except BackupError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from exc
    for warning in result.warnings:
        err.print(f"warning: {warning}", markup=False)
    m = result.manifest
    state = ", ".join(n.removeprefix("state/") for n in m.files if n.startswith("state/"))
    out.print(
        f"wrote {result.archive}: {m.repo_name} at {m.head[:12]} ({m.branch or 'detached'}), "
        f"desired state in {m.desired_dir}; state: {state or 'none'}",
        markup=False,
    )


@app.command("restore")
def restore_cmd(
    archive: Annotated[Path, typer.Argument(help="an archive written by `reconciler backup`")],
    into: Annotated[
        Path | None,
        typer.Option("--into", help="where to recreate the repository [default: ./<repo name>]"),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="replace the state already in the state directory")
    ] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Recreate the spec repository and the state directory from a backup."""
    target_state = resolve_state_dir(state_dir)
    try:
        result = restore_backup(archive, into, target_state, force)
    except BackupError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from exc
    m = result.manifest
    out.print(
        f"restored the repository in {result.repo_dir}: {m.branch or 'detached HEAD'} at "
        f"{m.head[:12]} (backup of {m.created})",
        markup=False,
    )
    out.print(f"origin: {result.origin_url or 'none (add one with git remote add)'}", markup=False)
    for path in result.state_files:
        out.print(f"restored {path}", markup=False)
    out.print(
        f"next: reconciler apply {result.desired_dir} --state-dir {result.state_dir} "
        "(adopts the engines that still run, starts what is missing)",
        markup=False,
    )

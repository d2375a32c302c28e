"""`reconciler rollback`: desired state as at a revision, in a new commit, applied here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.source.repo import NothingToRollBack, SourceError
from reconciler.source.rollback import push as push_branch
from reconciler.source.rollback import rollback

from . import command_app
from .apply import apply_cmd
from .history import source_errors
from .options import DEFAULT_DIR, DirArg, OnceOpt, StateDirOpt, TimeoutOpt, err, out

app = command_app()


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
        apply_cmd(directory=directory, rev=new.sha, once=once, timeout=timeout, state_dir=state_dir)
    if push_failed:
        raise typer.Exit(1)

"""`reconciler history` and `diff`: what each commit did to desired state, and its fate here.

The logic lives in reconciler/source/; these commands only print.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from reconciler.source.describe import spec_diff
from reconciler.source.history import history, read_applied, render_history
from reconciler.source.repo import InvalidRevision, NotFound, SourceError

from . import command_app
from .options import DEFAULT_DIR, DirArg, StateDirOpt, err, out, resolve_state_dir, usage_error
from .problems import Format, print_problems

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

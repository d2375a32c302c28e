"""`reconciler backup` and `restore`: one archive with the spec repository and the state."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.source.archive import BackupError, create_backup
from reconciler.source.repo import SourceError
from reconciler.source.restore import restore_backup

from . import command_app
from .history import source_errors
from .options import DEFAULT_DIR, DirArg, StateDirOpt, err, out, resolve_state_dir

app = command_app()


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

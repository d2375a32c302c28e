"""`reconciler status`: each model's status from the state file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from reconciler.state.directory import STATE_FILE
from reconciler.state.reading import read_state_or_recover

from . import command_app
from .options import StateDirOpt, err, out, resolve_state_dir

app = command_app()


def exit_on_model_errors(state_dir: Path) -> None:
    """Exit 1, naming them, when models are left in `error`: the host does not match."""
    state, _ = read_state_or_recover(state_dir / STATE_FILE)
    failed = [m for m in (state.models.values() if state else ()) if m.status == "error"]
    for model in sorted(failed, key=lambda m: m.id):
        why = model.last_error or "no error recorded"
        if model.given_up and model.restarts > 0:
            why = f"gave up after {model.restarts - 1} restart(s): {why}"
        err.print(f"error: {model.id}: {why}", markup=False)
    if failed:
        raise typer.Exit(1)


def print_status(state_dir: Path) -> None:
    state, _ = read_state_or_recover(state_dir / STATE_FILE)
    if state is None or not state.models:
        out.print(f"no models in {state_dir / STATE_FILE}")
        return
    colours = {"running": "green", "starting": "cyan", "error": "red", "preempted": "yellow"}
    table = Table(
        "model", "status", "pid/container", "port", "gpus", "MiB/GPU", "restarts", "error"
    )
    for model in sorted(state.models.values(), key=lambda m: m.id):
        ident = str(model.pid) if model.pid else (model.container_id or "")[:12]
        status = f"[{colours.get(model.status, 'white')}]{model.status}[/]"
        table.add_row(
            model.id,
            status,
            ident,
            str(model.port or ""),
            ",".join(map(str, model.gpus or [])),
            str(model.memory_mb or ""),
            str(model.restarts_total),
            (model.last_error or "")[:60],
        )
    out.print(table)
    revision = (state.revision or "working tree")[:12]
    if state.revision_dirty:
        revision += " + uncommitted edits"
    out.print(f"revision: {revision}; state file: {state_dir / STATE_FILE}", markup=False)


@app.command("status")
def status_cmd(state_dir: StateDirOpt = None) -> None:
    """Show each model's status from the state file."""
    print_status(resolve_state_dir(state_dir))

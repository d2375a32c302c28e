"""`reconciler status` and `events`: each model's status from the state file, and the event log
(starts, stops, preemptions, crashes...), printed or followed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from reconciler.cli import command_app
from reconciler.cli.options import (
    HostNameOpt,
    StateDirOpt,
    err,
    out,
    resolve_state_dir,
    usage_error,
)
from reconciler.state.directory import EVENTS_FILE, LAST_VALID_FILE, STATE_FILE
from reconciler.state.eventlog import Logged, events_end, read_events_after, read_recent_events
from reconciler.state.reading import read_state_or_recover

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
def status_cmd(state_dir: StateDirOpt = None, host: HostNameOpt = None) -> None:
    """Show each model's status from the state file."""
    directory = resolve_state_dir(state_dir)
    print_status(directory)
    recorded = _fleet_host(directory)
    if recorded is None:
        return
    out.print(f"host: {recorded} (its share of the fleet)", markup=False)
    if host is not None and host != recorded:
        err.print(
            f"warning: {directory} holds host {recorded}'s state, not {host}'s: "
            "pass --state-dir of that host",
            markup=False,
        )


def _fleet_host(state_dir: Path) -> str | None:
    """The fleet host whose share the state directory's last valid desired state is."""
    try:
        doc = json.loads((state_dir / LAST_VALID_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    host = doc.get("host") if isinstance(doc, dict) else None
    return host if isinstance(host, str) else None


@app.command("events")
def events_cmd(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing events as they happen")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="recent events to print")] = 20,
    model: Annotated[str | None, typer.Option("--model", help="only this model's")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Print the event log (starts, stops, preemptions, crashes...), newest last."""
    if limit < 0:
        raise usage_error("--limit must not be negative")
    path = resolve_state_dir(state_dir) / EVENTS_FILE
    recent = read_recent_events(path, limit, model=model) if limit else []
    for logged in recent:
        _print_event(logged, as_json)
    if not follow:
        return
    # the event log is the record: tail it (works with `run`, `apply` and `restart` alike)
    offset = recent[-1].cursor if recent else events_end(path)
    while True:
        new, offset = read_events_after(path, offset)
        for logged in new:
            if model is None or logged.event.model == model:
                _print_event(logged, as_json)
        time.sleep(0.5)


def _print_event(logged: Logged, as_json: bool) -> None:
    event = logged.event
    if as_json:
        sys.stdout.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    colours = {"crashed": "red", "gave-up": "red", "error": "red", "desired-invalid": "red"}
    colours |= {"ready": "green", "start": "green", "preempt": "yellow", "stop": "yellow"}
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.time))
    line = Text(f"{when}  ")
    line.append(f"{event.kind:<17}", style=colours.get(event.kind, "bold"))
    line.append(f" {event.model or '-':<20} {event.message}")
    out.print(line)

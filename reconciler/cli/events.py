"""`reconciler events`: print the event log, and follow it."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer
from rich.text import Text

from reconciler.state.directory import EVENTS_FILE
from reconciler.state.eventlog import Logged, events_end, read_events_after, read_recent_events

from . import command_app
from .options import StateDirOpt, out, resolve_state_dir, usage_error

app = command_app()


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

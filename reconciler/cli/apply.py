"""`reconciler apply`, `restart` and `stop-all`: make the host match desired state now.

Only what the first pass needs is imported before it: the output (rich, the plan, problem and
status renderers) is imported once the pass has launched the engines, while they load.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.loop.controller import converge
from reconciler.loop.reconcile import Reconciler, Settings

from . import command_app, options
from .options import (
    DEFAULT_DIR,
    DirArg,
    OnceOpt,
    RevOpt,
    StateDirOpt,
    TimeoutOpt,
    private_state_dir,
)

if TYPE_CHECKING:
    from rich.console import Console

app = command_app()


def _output() -> tuple[Console, Console]:
    """The consoles, and the modules that print a result imported: called while engines start
    (converge's `meanwhile`), so that none of this waits until they are ready."""

    return options.out, options.err


def _prepare_output() -> None:
    """converge's `meanwhile`: the consoles, made while the engines start (see _output)."""
    _output()


def _reconciler(directory: Path, state_dir: Path | None, rev: str | None = None) -> Reconciler:
    return Reconciler(Settings(directory, private_state_dir(state_dir), rev))


@app.command("apply")
def apply_cmd(
    directory: DirArg = Path(DEFAULT_DIR),
    rev: RevOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan, change nothing")
    ] = False,
    once: OnceOpt = False,
    timeout: TimeoutOpt = 900.0,
    state_dir: StateDirOpt = None,
) -> None:
    """Make the host match desired state: passes until every started engine is ready."""
    reconciler = _reconciler(directory, state_dir, rev)
    if dry_run:
        from .plan import PlanFormat, render_plan

        plan = reconciler.pass_once(dry_run=True).plan
        sys.stdout.write(render_plan(plan, PlanFormat.text) + "\n")
        raise typer.Exit(0 if plan.valid else 1)
    results = (
        [reconciler.pass_once()]
        if once
        else converge(reconciler, timeout, meanwhile=_prepare_output)
    )
    out, err = _output()
    from reconciler.cli.loading import Format, print_problems

    from .status import exit_on_model_errors, print_status

    for result in results:
        for line in result.executed:
            out.print(line, markup=False)
    last = results[-1]
    if not last.plan.valid:
        print_problems([p for p in last.plan.problems if p.is_error], Format.text)
        out.print("[red]desired state is invalid: nothing was changed[/]")
        raise typer.Exit(1)
    if not any(r.executed for r in results):
        out.print("nothing to do: the host matches desired state")
    print_status(reconciler.state_dir)
    if not last.settled and not once:
        err.print(f"error: not settled within {timeout:g}s")
        raise typer.Exit(1)
    exit_on_model_errors(reconciler.state_dir)


@app.command("restart")
def restart_cmd(
    model_id: Annotated[str, typer.Argument(help="the model to restart")],
    directory: DirArg = Path(DEFAULT_DIR),
    state_dir: StateDirOpt = None,
) -> None:
    """Restart a model now, clearing a given-up error (its retries start again)."""
    from reconciler.core.serving import expand

    reconciler = _reconciler(directory, state_dir)
    desired, _ = reconciler.load_desired()
    if desired is not None and model_id not in expand(desired).models:  # or an instance's id
        options.err.print(
            f"error: {model_id} is not in the desired state ({directory})", markup=False
        )
        raise typer.Exit(1)
    reconciler.request_restart(model_id)
    results = converge(reconciler, 900.0, meanwhile=_prepare_output)
    out, _ = _output()
    from .status import exit_on_model_errors, print_status

    for result in results:
        for line in result.executed:
            out.print(line, markup=False)
    print_status(reconciler.state_dir)
    exit_on_model_errors(reconciler.state_dir)


@app.command("stop-all")
def stop_all_cmd(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Stop every engine this reconciler manages (processes and containers).

    They are recorded as stopped: the next `apply` (or pass of `run`) starts what desired
    state asks for again."""
    out = options.out
    reconciler = _reconciler(Path(DEFAULT_DIR), state_dir)
    handles = [h for hs in reconciler.observe().values() for h in hs]
    if not handles:
        out.print("no managed engine runs")
        return
    names = ", ".join(sorted({h.model_id for h in handles}))
    if not yes and not typer.confirm(f"stop {len(handles)} engine(s): {names}?"):
        raise typer.Exit(1)
    reconciler.stop_engines(handles, "stopped by an operator (stop-all)")
    for handle in handles:
        out.print(f"stopped {handle.model_id}")

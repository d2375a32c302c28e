"""The `reconciler` command.

Exit codes: 0 success (warnings allowed), 1 invalid desired state or a failed action, 2 usage errors
(unknown option, a directory or revision that does not exist).
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from reconciler.load import (
    LoadError,
    RawDesiredState,
    load_directory,
    load_revision,
    load_staged,
)
from reconciler.problems import Problem
from reconciler.validate import ValidationResult, validate

app = typer.Typer(
    help="A GitOps reconciler for LLM inference engines on GPU servers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
schema_app = typer.Typer(help="JSON Schemas of the spec files.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_DIR = "desired-state"


class Format(StrEnum):
    text = "text"
    json = "json"
    github = "github"


DirArg = Annotated[Path, typer.Argument(help="the desired-state directory")]
RevOpt = Annotated[
    str | None, typer.Option("--rev", help="read the directory as committed at this git revision")
]


def usage_error(message: str) -> typer.Exit:
    err.print(f"error: {message}")
    return typer.Exit(2)


def read_desired(directory: Path, rev: str | None, staged: bool = False) -> RawDesiredState:
    """Load from the working tree, a revision or the index; a bad location is exit 2."""
    try:
        if staged:
            return load_staged(directory)
        return load_revision(directory, rev) if rev else load_directory(directory)
    except LoadError as exc:
        raise usage_error(str(exc)) from exc


def validate_here(raw: RawDesiredState, *, check_paths: bool = True) -> ValidationResult:
    """Validate with this host's checks: engine parameters, and model files present."""
    from reconciler import modelfiles
    from reconciler.flags import KNOWN_PARAMETERS

    path_check = modelfiles.missing_message if check_paths else None
    return validate(raw, path_check=path_check, known_parameters=KNOWN_PARAMETERS)


def print_problems(problems: list[Problem], fmt: Format) -> None:
    if fmt is Format.github:
        for p in problems:
            kind = "error" if p.is_error else "warning"
            title = f",title={_gh_property(p.field)}" if p.field else ""
            where = f"file={_gh_property(p.file)},line={p.line}"
            out.print(f"::{kind} {where}{title}::{_gh_data(p.message)}", markup=False)
        return
    for p in problems:
        style = "red" if p.is_error else "yellow"
        out.print(Text(p.location(), style=style), end="")
        out.print(f": {p.severity}: ", end="", markup=False)
        out.print(f"{p.field}: {p.message}" if p.field else p.message, markup=False)


def _gh_data(text: str) -> str:
    """Escape a workflow command's message (GitHub Actions' escaping rules)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


@app.command("validate")
def validate_cmd(
    directory: DirArg = Path(DEFAULT_DIR),
    rev: RevOpt = None,
    fmt: Annotated[Format, typer.Option("--format", help="text, json, or github")] = Format.text,
    no_path_check: Annotated[
        bool, typer.Option("--no-path-check", help="do not warn about model files absent here")
    ] = False,
    staged: Annotated[
        bool, typer.Option("--staged", help="validate what git's index holds (pre-commit hook)")
    ] = False,
) -> None:
    """Validate desired state: JSON Schema per file, then checks across files."""
    if staged and rev:
        raise usage_error("--staged and --rev exclude each other")
    raw = read_desired(directory, rev, staged)
    result = validate_here(raw, check_paths=not no_path_check)
    if fmt is Format.json:
        doc = {"valid": result.valid, "problems": [p.to_dict() for p in result.problems]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print_problems(result.problems, fmt)
        if fmt is Format.text:
            count = len(raw.models)
            verdict = "[green]valid[/]" if result.valid else "[red]invalid[/]"
            errors, warnings = len(result.errors), len(result.problems) - len(result.errors)
            out.print(
                f"{directory}: {verdict} ({count} model(s) read, {errors} error(s), "
                f"{warnings} warning(s))"
            )
    raise typer.Exit(0 if result.valid else 1)


@schema_app.command("export")
def schema_export(
    directory: Annotated[Path, typer.Argument(help="where to write the schemas")] = Path("schemas"),
) -> None:
    """Write model.schema.json and cluster.schema.json generated from the pydantic models."""
    from reconciler.schemas import write_schemas

    for path in write_schemas(directory):
        out.print(f"wrote {path}")


# -- host settings (never from git): flags and RECONCILER_* environment variables ----------------


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "reconciler"


StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="RECONCILER_STATE_DIR",
        help="state file, engine logs and records [default: ~/.local/state/reconciler]",
        show_default=False,
    ),
]


class PlanFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


def _state_dir(path: Path | None) -> Path:
    return path if path is not None else default_state_dir()


def _observed_from_file(path: Path):
    from reconciler.state import ObservedFileError, read_observed

    try:
        return read_observed(path)
    except (OSError, ObservedFileError) as exc:
        raise usage_error(f"{path}: {exc}") from exc


def _plan_offline(directory: Path, rev: str | None, observed, fmt: PlanFormat):
    """Plan against an observed-state file (or nothing running): no engine is touched."""
    from reconciler.gpus import InventoryError
    from reconciler.plan import invalid_plan
    from reconciler.planning import plan_desired

    raw = read_desired(directory, rev)
    result = validate_here(raw, check_paths=False)
    if result.desired is None:
        return invalid_plan(raw.revision, result.problems), None
    try:
        return plan_desired(result.desired, observed, result.problems), result.desired
    except InventoryError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from exc


def _render(plan, fmt: PlanFormat, spec_diff: str | None = None) -> str:
    from reconciler.plan import render_json, render_markdown, render_text

    if fmt is PlanFormat.json:
        return render_json(plan)
    if fmt is PlanFormat.markdown:
        return render_markdown(plan, spec_diff)
    text = render_text(plan)
    return f"{spec_diff}\n\n{text}" if spec_diff else text


@app.command("plan")
def plan_cmd(
    directory: DirArg = Path(DEFAULT_DIR),
    observed_file: Annotated[
        Path | None,
        typer.Option("--observed", help="read what runs from this state file, not the host"),
    ] = None,
    rev: RevOpt = None,
    base: Annotated[
        str | None, typer.Option("--base", help="pull-request review: the target branch revision")
    ] = None,
    head: Annotated[
        str | None, typer.Option("--head", help="pull-request review: the proposed revision")
    ] = None,
    fmt: Annotated[PlanFormat, typer.Option("--format")] = PlanFormat.text,
    state_dir: StateDirOpt = None,
) -> None:
    """Print what a pass would do: starts, stops, restarts, preemptions, and why."""
    if (base is None) != (head is None):
        raise usage_error("--base and --head go together")
    observed = _observed_from_file(observed_file) if observed_file else None
    if base is not None:
        plan, spec_diff = _plan_review(directory, base, head, observed)
        sys.stdout.write(_render(plan, fmt, spec_diff) + "\n")
        raise typer.Exit(0 if plan.valid else 1)
    if observed is None and _host_observable(state_dir):
        from reconciler.reconcile import Reconciler, Settings

        reconciler = Reconciler(Settings(directory, _state_dir(state_dir), rev))
        plan = reconciler.pass_once(dry_run=True).plan
    else:
        plan, _ = _plan_offline(directory, rev, observed or {}, fmt)
    sys.stdout.write(_render(plan, fmt) + "\n")
    raise typer.Exit(0 if plan.valid else 1)


def _host_observable(state_dir: Path | None) -> bool:
    """Plan observes the live host when a state directory exists (the reconciler ran here)."""
    return _state_dir(state_dir).is_dir()


def _plan_review(directory: Path, base: str, head: str | None, observed):
    """Plan HEAD against the state that BASE would have converged to, plus the spec diff."""
    from reconciler.diff import diff_cluster, diff_desired, render_diff
    from reconciler.plan import converged_observed

    base_plan, base_desired = _plan_offline(directory, base, observed or {}, PlanFormat.text)
    start = converged_observed(base_plan, observed or {}) if base_desired else dict(observed or {})
    head_plan, head_desired = _plan_offline(directory, head, start, PlanFormat.text)
    text = render_diff(
        diff_desired(base_desired, head_desired), diff_cluster(base_desired, head_desired)
    )
    return head_plan, text or "no spec changes"


def _reconciler(directory: Path, state_dir: Path | None, rev: str | None = None):
    from reconciler.reconcile import Reconciler, Settings

    return Reconciler(Settings(directory, _state_dir(state_dir), rev))


@app.command("apply")
def apply_cmd(
    directory: DirArg = Path(DEFAULT_DIR),
    rev: RevOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan, change nothing")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="one pass; do not wait for engines to be ready")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="seconds to wait for the host to settle")
    ] = 900.0,
    state_dir: StateDirOpt = None,
) -> None:
    """Make the host match desired state: passes until every started engine is ready."""
    from reconciler.reconcile import converge

    reconciler = _reconciler(directory, state_dir, rev)
    if dry_run:
        plan = reconciler.pass_once(dry_run=True).plan
        sys.stdout.write(_render(plan, PlanFormat.text) + "\n")
        raise typer.Exit(0 if plan.valid else 1)
    results = [reconciler.pass_once()] if once else converge(reconciler, timeout)
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
    _print_status(reconciler.state_dir)
    if not last.settled and not once:
        err.print(f"error: not settled within {timeout:g}s")
        raise typer.Exit(1)


def _print_status(state_dir: Path) -> None:
    from rich.table import Table

    from reconciler.reconcile import STATE_FILE
    from reconciler.state import read_state_or_recover

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
    out.print(f"revision: {revision}; state file: {state_dir / STATE_FILE}")


@app.command("status")
def status_cmd(state_dir: StateDirOpt = None) -> None:
    """Show each model's status from the state file."""
    _print_status(_state_dir(state_dir))


@app.command("restart")
def restart_cmd(
    model_id: Annotated[str, typer.Argument(help="the model to restart")],
    directory: DirArg = Path(DEFAULT_DIR),
    state_dir: StateDirOpt = None,
) -> None:
    """Restart a model now, clearing a given-up error (its retries start again)."""
    from reconciler.reconcile import converge

    reconciler = _reconciler(directory, state_dir)
    reconciler.request_restart(model_id)
    for result in converge(reconciler, 900.0):
        for line in result.executed:
            out.print(line, markup=False)
    _print_status(reconciler.state_dir)


@app.command("stop-all")
def stop_all_cmd(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Stop every engine this reconciler manages (processes and containers)."""
    reconciler = _reconciler(Path(DEFAULT_DIR), state_dir)
    handles = [h for hs in reconciler.observe().values() for h in hs]
    if not handles:
        out.print("no managed engine runs")
        return
    names = ", ".join(sorted({h.model_id for h in handles}))
    if not yes and not typer.confirm(f"stop {len(handles)} engine(s): {names}?"):
        raise typer.Exit(1)
    for handle in handles:
        reconciler.engines[handle.framework].stop(handle, reconciler.settings.stop_grace_s)
        out.print(f"stopped {handle.model_id}")


@app.command("gpus")
def gpus_cmd(directory: DirArg = Path(DEFAULT_DIR)) -> None:
    """Print the GPU inventory: declared in cluster.yaml, or read through NVML."""
    from rich.table import Table

    from reconciler.gpus import InventoryError, inventory

    raw = read_desired(directory, None)
    result = validate_here(raw, check_paths=False)
    if result.desired is None:
        print_problems(result.errors, Format.text)
        raise typer.Exit(1)
    try:
        gpus = inventory(result.desired.cluster)
    except InventoryError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from exc
    source = "declared" if isinstance(result.desired.cluster.gpus, list) else "NVML"
    table = Table("gpu", "name", "total MiB", "used MiB", "free MiB", "util %", "temp C", "power W")
    for g in gpus:
        table.add_row(
            str(g.device_id),
            g.name,
            str(g.memory_total),
            str(g.memory_used),
            str(g.memory_free),
            *("" if v is None else f"{v:g}" for v in (g.utilization, g.temperature, g.power)),
        )
    out.print(table)
    out.print(f"source: {source}")


@app.command("estimate")
def estimate_cmd(
    model_path: Annotated[str, typer.Argument(help="a .gguf file, an HF directory, or pkg:MODULE")],
    ctx: Annotated[int | None, typer.Option("--ctx", help="context length")] = None,
) -> None:
    """Estimate the GPU memory a model needs (weights + KV cache + buffers)."""
    from reconciler.estimate import render_estimate
    from reconciler.modelfacts import estimate_path

    estimate = estimate_path(model_path, ctx)
    out.print(render_estimate(estimate), markup=False)
    raise typer.Exit(0 if estimate.per_gpu_mb is not None else 1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)

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

from reconciler.core.desired import RawDesiredState, ValidationResult
from reconciler.core.problems import Problem
from reconciler.core.validate import validate
from reconciler.source.load import LoadError, load_directory, load_revision, load_staged

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
    from reconciler.core.flags import KNOWN_PARAMETERS
    from reconciler.models import files as modelfiles

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


OnceOpt = Annotated[
    bool, typer.Option("--once", help="one pass; do not wait for engines to be ready")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="seconds to wait for the host to settle")
]


class PlanFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


def _state_dir(path: Path | None) -> Path:
    return path if path is not None else default_state_dir()


def _observed_from_file(path: Path):
    from reconciler.state.statefile import ObservedFileError, read_observed

    try:
        return read_observed(path)
    except (OSError, ObservedFileError) as exc:
        raise usage_error(f"{path}: {exc}") from exc


def _plan_offline(directory: Path, rev: str | None, observed, fmt: PlanFormat):
    """Plan against an observed-state file (or nothing running): no engine is touched."""
    from reconciler.core.plan import invalid_plan
    from reconciler.gpus import InventoryError
    from reconciler.loop.planning import plan_desired

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
    from reconciler.core.plan import render_json, render_markdown, render_text

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
        from reconciler.loop.reconcile import Reconciler, Settings

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
    from reconciler.core.diff import diff_cluster, diff_desired, render_diff
    from reconciler.core.plan import converged_observed

    base_plan, base_desired = _plan_offline(directory, base, observed or {}, PlanFormat.text)
    start = converged_observed(base_plan, observed or {}) if base_desired else dict(observed or {})
    head_plan, head_desired = _plan_offline(directory, head, start, PlanFormat.text)
    text = render_diff(
        diff_desired(base_desired, head_desired), diff_cluster(base_desired, head_desired)
    )
    return head_plan, text or "no spec changes"


def _reconciler(directory: Path, state_dir: Path | None, rev: str | None = None):
    from reconciler.loop.reconcile import Reconciler, Settings

    return Reconciler(Settings(directory, _state_dir(state_dir), rev))


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
    from reconciler.loop.reconcile import converge

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
    _exit_on_model_errors(reconciler.state_dir)


def _exit_on_model_errors(state_dir: Path) -> None:
    """Exit 1, naming them, when models are left in `error`: the host does not match."""
    from reconciler.state.paths import STATE_FILE
    from reconciler.state.statefile import read_state_or_recover

    state, _ = read_state_or_recover(state_dir / STATE_FILE)
    failed = [m for m in (state.models.values() if state else ()) if m.status == "error"]
    for model in sorted(failed, key=lambda m: m.id):
        why = model.last_error or "no error recorded"
        if model.given_up and model.restarts > 0:
            why = f"gave up after {model.restarts - 1} restart(s): {why}"
        err.print(f"error: {model.id}: {why}", markup=False)
    if failed:
        raise typer.Exit(1)


def _print_status(state_dir: Path) -> None:
    from rich.table import Table

    from reconciler.state.paths import STATE_FILE
    from reconciler.state.statefile import read_state_or_recover

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
    _print_status(_state_dir(state_dir))


@app.command("restart")
def restart_cmd(
    model_id: Annotated[str, typer.Argument(help="the model to restart")],
    directory: DirArg = Path(DEFAULT_DIR),
    state_dir: StateDirOpt = None,
) -> None:
    """Restart a model now, clearing a given-up error (its retries start again)."""
    from reconciler.loop.reconcile import converge

    reconciler = _reconciler(directory, state_dir)
    desired, _ = reconciler.load_desired()
    if desired is not None and model_id not in desired.models:
        err.print(f"error: {model_id} is not in the desired state ({directory})", markup=False)
        raise typer.Exit(1)
    reconciler.request_restart(model_id)
    for result in converge(reconciler, 900.0):
        for line in result.executed:
            out.print(line, markup=False)
    _print_status(reconciler.state_dir)
    _exit_on_model_errors(reconciler.state_dir)


@app.command("stop-all")
def stop_all_cmd(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Stop every engine this reconciler manages (processes and containers).

    They are recorded as stopped: the next `apply` (or pass of `run`) starts what desired
    state asks for again."""
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


@app.command("run")
def run_cmd(
    directory: DirArg = Path(DEFAULT_DIR),
    repo: Annotated[
        str | None, typer.Option("--repo", help="follow this git remote instead of DIR")
    ] = None,
    branch: Annotated[str, typer.Option("--branch", help="remote mode: the branch")] = "main",
    path: Annotated[
        str, typer.Option("--path", help="remote mode: desired-state inside the repository")
    ] = DEFAULT_DIR,
    committed_only: Annotated[
        bool, typer.Option("--committed-only", help="local mode: apply HEAD, not the worktree")
    ] = False,
    allow_force_push: Annotated[
        bool, typer.Option("--allow-force-push", help="remote mode: follow a rewritten branch")
    ] = False,
    listen: Annotated[
        str, typer.Option("--listen", envvar="RECONCILER_LISTEN", help="API address host:port")
    ] = "127.0.0.1:8080",
    no_api: Annotated[bool, typer.Option("--no-api", help="do not serve the HTTP API")] = False,
    resync: Annotated[float, typer.Option("--resync", help="seconds between full resyncs")] = 60.0,
    poll: Annotated[float, typer.Option("--poll", help="remote: seconds between fetches")] = 30.0,
    stop_engines_on_exit: Annotated[
        bool, typer.Option("--stop-engines-on-exit", help="stop every engine when the daemon stops")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every pass")] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """The daemon: reconcile on every change, commit, engine exit, webhook and resync."""
    import logging

    from reconciler.loop.controller import LoopSettings
    from reconciler.loop.daemon import Daemon, DaemonOptions

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe is noise
    token = os.environ.get("RECONCILER_API_TOKEN") or None
    host = listen.rpartition(":")[0].strip("[]")
    if not no_api and host not in ("127.0.0.1", "localhost", "::1") and not token:
        raise usage_error(
            f"refusing to listen on {listen} without RECONCILER_API_TOKEN: "
            "a non-loopback API needs a bearer token"
        )
    options = DaemonOptions(
        desired_dir=directory,
        state_dir=_state_dir(state_dir),
        repo_url=repo,
        branch=branch,
        path=path,
        committed_only=committed_only,
        allow_force_push=allow_force_push,
        listen=listen,
        api_token=token,
        webhook_secret=os.environ.get("RECONCILER_WEBHOOK_SECRET") or None,
        serve_api=not no_api,
        stop_engines_on_exit=stop_engines_on_exit,
        loop=LoopSettings(resync_s=resync, poll_s=poll),
    )
    daemon = Daemon(options)
    where = options.state_dir
    out.print(f"reconciler run: desired state {repo or directory}", markup=False)
    out.print(f"  state file  {where / 'state.yaml'}", markup=False)
    out.print(f"  engine logs {where / 'logs'}", markup=False)
    out.print(f"  event log   {where / 'events.jsonl'}", markup=False)
    if not no_api:
        out.print(f"  API         {daemon.api_url()}/api/v1/models", markup=False)
        out.print(f"  metrics     {daemon.api_url()}/metrics", markup=False)
        out.print(f"  dashboard   {daemon.api_url()}/", markup=False)
    daemon.serve_forever()


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
    import time as clock

    from reconciler.api import events_end, read_events_after, read_recent_events
    from reconciler.state.paths import EVENTS_FILE

    if limit < 0:
        raise usage_error("--limit must not be negative")
    path = _state_dir(state_dir) / EVENTS_FILE
    recent = read_recent_events(path, limit, model=model) if limit else []
    for event in recent:
        _print_event(event, as_json)
    if not follow:
        return
    # the event log is the record: tail it (works with `run`, `apply` and `restart` alike)
    offset = recent[-1]["id"] if recent else events_end(path)
    while True:
        new, offset = read_events_after(path, offset)
        for event in new:
            if model is None or event.get("model") == model:
                _print_event(event, as_json)
        clock.sleep(0.5)


def _print_event(event: dict, as_json: bool) -> None:
    import time as clock

    if as_json:
        record = {k: v for k, v in event.items() if k != "id"}
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    colours = {"crashed": "red", "gave-up": "red", "error": "red", "desired-invalid": "red"}
    colours |= {"ready": "green", "start": "green", "preempt": "yellow", "stop": "yellow"}
    when = clock.strftime("%Y-%m-%d %H:%M:%S", clock.localtime(event["time"]))
    line = Text(f"{when}  ")
    line.append(f"{event['kind']:<17}", style=colours.get(event["kind"], "bold"))
    line.append(f" {event.get('model') or '-':<20} {event.get('message', '')}")
    out.print(line)


@app.command("estimate")
def estimate_cmd(
    model_path: Annotated[str, typer.Argument(help="a .gguf file, an HF directory, or pkg:MODULE")],
    ctx: Annotated[int | None, typer.Option("--ctx", help="context length")] = None,
) -> None:
    """Estimate the GPU memory a model needs (weights + KV cache + buffers)."""
    from reconciler.core.estimate import render_estimate
    from reconciler.models.facts import estimate_path

    estimate = estimate_path(model_path, ctx)
    out.print(render_estimate(estimate), markup=False)
    raise typer.Exit(0 if estimate.per_gpu_mb is not None else 1)


# -- render: the same specs for a fleet (Kubernetes, synced by Argo CD or Flux) -------------------

render_app = typer.Typer(help="Render desired state for a fleet.", no_args_is_help=True)
app.add_typer(render_app, name="render")


@render_app.command("kubernetes")
def render_kubernetes_cmd(
    out_dir: Annotated[
        Path, typer.Option("--out", help="the output directory: Argo CD or Flux point at it")
    ],
    directory: DirArg = Path(DEFAULT_DIR),
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", help="namespace of the objects (default: cluster.yaml's)"),
    ] = None,
    rev: RevOpt = None,
    check: Annotated[
        bool, typer.Option("--check", help="write nothing; exit 1 when OUT is stale against DIR")
    ] = False,
) -> None:
    """Render Deployments, Services, PriorityClasses and a kustomization.yaml into OUT."""
    import re

    from reconciler import kubernetes
    from reconciler.core.spec import ID_PATTERN

    if namespace is not None and not re.fullmatch(ID_PATTERN, namespace):
        raise usage_error(f"--namespace {namespace!r} is not a DNS label")
    if out_dir.exists() and not out_dir.is_dir():
        raise usage_error(f"--out {out_dir}: not a directory")
    raw = read_desired(directory, rev)
    result = validate_here(raw, check_paths=False)
    if result.desired is None:
        print_problems(result.errors, Format.text)
        err.print(f"{directory}: invalid desired state: nothing rendered")
        raise typer.Exit(1)
    rendered, problems = kubernetes.render_loaded(raw, result.desired, namespace)
    if problems:
        print_problems(problems, Format.text)
        err.print(f"{directory}: cannot run on Kubernetes as specified: nothing rendered")
        raise typer.Exit(1)
    if check:
        stale = kubernetes.stale_files(out_dir, rendered)
        for name in stale:
            out.print(f"stale: {out_dir / name}", markup=False)
        if stale:
            err.print(
                f"{out_dir} is stale: run `reconciler render kubernetes {directory} --out "
                f"{out_dir}` and commit the result",
                markup=False,
            )
            raise typer.Exit(1)
        out.print(f"{out_dir}: up to date ({len(rendered.files)} file(s))", markup=False)
        return
    for note in rendered.notes:
        out.print(f"note: {note}", markup=False)
    try:
        written, removed = kubernetes.write_rendered(out_dir, rendered)
    except kubernetes.ForeignFileError as exc:
        raise usage_error(str(exc)) from exc
    except OSError as exc:
        err.print(f"error: cannot write {out_dir}: {exc}", markup=False)
        raise typer.Exit(1) from exc
    unchanged = len(rendered.files) - len(written)
    out.print(
        f"{out_dir}: {len(written)} written, {len(removed)} removed, {unchanged} unchanged",
        markup=False,
    )


# ---- git: history, rollback, diff, backup and restore, hooks -----------------------------------
# (the logic lives in reconciler/source.py, backup.py and hooks.py; these commands only print)

hooks_app = typer.Typer(help="Git hooks for spec repositories.", no_args_is_help=True)
app.add_typer(hooks_app, name="hooks")


class HistoryFormat(StrEnum):
    text = "text"
    json = "json"


def _source_errors(exc: Exception) -> typer.Exit:
    """A missing repository, revision or directory is a usage error (2); the rest fail (1)."""
    from reconciler.source.git import InvalidRevision, NotFound

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
    from reconciler.source.git import SourceError, history, read_applied, render_history

    record = read_applied(_state_dir(state_dir))
    try:
        entries = history(directory, limit, record)
    except SourceError as exc:
        raise _source_errors(exc) from exc
    if fmt is HistoryFormat.json:
        sys.stdout.write(json.dumps([e.to_dict() for e in entries], indent=2) + "\n")
    else:
        out.print(render_history(entries, record.current_dirty), markup=False)


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
    from reconciler.source.git import NothingToRollBack, SourceError, rollback
    from reconciler.source.git import push as push_branch

    try:
        new, target = rollback(directory, rev, message)
    except NothingToRollBack as exc:
        out.print(str(exc), markup=False)
        return
    except SourceError as exc:
        raise _source_errors(exc) from exc
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


@app.command("diff")
def diff_cmd(
    base: Annotated[str, typer.Argument(help="the older revision")],
    head: Annotated[str, typer.Argument(help="the newer revision")],
    directory: DirArg = Path(DEFAULT_DIR),
) -> None:
    """The spec-level difference between two revisions: models and fields, not YAML lines."""
    from reconciler.source.git import SourceError, spec_diff

    try:
        text = spec_diff(directory, base, head)
    except SourceError as exc:
        raise _source_errors(exc) from exc
    out.print(text or "no spec changes", markup=False)


@app.command("backup")
def backup_cmd(
    archive: Annotated[Path, typer.Argument(help="the archive to write (.tar.gz)")],
    directory: DirArg = Path(DEFAULT_DIR),
    state_dir: StateDirOpt = None,
) -> None:
    """Write one archive: a git bundle of the spec repository (every ref) and the state."""
    from reconciler.source.backup import BackupError, create_backup
    from reconciler.source.git import SourceError

    try:
        result = create_backup(archive, directory, _state_dir(state_dir))
    except SourceError as exc:
        raise _source_errors(exc) from exc
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
    from reconciler.source.backup import BackupError, restore_backup

    target_state = _state_dir(state_dir)
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


@hooks_app.command("install")
def hooks_install_cmd(
    repo: Annotated[Path, typer.Argument(help="the spec repository")] = Path("."),
    server: Annotated[
        bool, typer.Option("--server", help="a bare repository receiving pushes: pre-receive")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="replace different hooks")] = False,
) -> None:
    """Install the git hooks: pre-commit, post-merge, post-checkout (or pre-receive)."""
    from reconciler.source.hooks import HookError, install_hooks

    try:
        done = install_hooks(repo, server=server, force=force)
    except HookError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from exc
    for item in done:
        out.print(f"{item.action}: {item.path}", markup=False)


@hooks_app.command("validate-rev")
def hooks_validate_rev_cmd(
    rev: Annotated[str, typer.Argument(help="the revision to validate")],
    directory: Annotated[
        str, typer.Argument(help="the desired-state directory, relative to the repository top")
    ] = DEFAULT_DIR,
    git_dir: Annotated[str, typer.Option("--git-dir", help="the repository, bare or not")] = ".",
) -> None:
    """Validate desired state at REV in a repository that may be bare (pre-receive hook).

    Model files are not checked: a git server does not hold them.
    """
    from reconciler.source.git import load_revision_bare

    try:
        raw = load_revision_bare(git_dir, directory, rev)
    except LoadError as exc:
        raise usage_error(str(exc)) from exc
    result = validate_here(raw, check_paths=False)
    print_problems(result.problems, Format.text)
    verdict = "[green]valid[/]" if result.valid else "[red]invalid[/]"
    errors = len(result.errors)
    out.print(
        f"{directory} at {rev[:12]}: {verdict} ({len(raw.models)} model(s) read, "
        f"{errors} error(s), {len(result.problems) - errors} warning(s))"
    )
    raise typer.Exit(0 if result.valid else 1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)

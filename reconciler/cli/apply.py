"""Make the host match desired state: `reconciler apply` (passes until every started engine is
ready), `restart`, `stop-all`, and `run` (the daemon: the loop and the git source, with the HTTP
API and the gateway beside it).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.api.api_service import ApiError, ApiService, split_listen
from reconciler.cli import command_app, options
from reconciler.cli.options import (
    DEFAULT_DIR,
    DirArg,
    HostNameOpt,
    OnceOpt,
    RevOpt,
    StateDirOpt,
    TimeoutOpt,
    out,
    private_state_dir,
    usage_error,
)
from reconciler.gateway.routes import ROUTES_FILE
from reconciler.gateway.service import GatewayError, GatewayService, attach, is_loopback
from reconciler.loop.controller import LoopSettings, converge
from reconciler.loop.daemon import Daemon, DaemonOptions
from reconciler.loop.reconcile import Reconciler, Settings

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


def _reconciler(
    directory: Path, state_dir: Path | None, host: str | None, rev: str | None = None
) -> Reconciler:
    return Reconciler(Settings(directory, private_state_dir(state_dir), rev, host_name=host))


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
    host: HostNameOpt = None,
) -> None:
    """Make the host match desired state: passes until every started engine is ready."""
    reconciler = _reconciler(directory, state_dir, host, rev)
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
    host: HostNameOpt = None,
) -> None:
    """Restart a model now, clearing a given-up error (its retries start again)."""
    from reconciler.core.serving import expand

    reconciler = _reconciler(directory, state_dir, host)
    desired, _ = reconciler.load_desired()
    if desired is not None and model_id not in expand(desired).models:  # or an instance's id
        where = desired.elsewhere.get(model_id)
        why = (
            f"runs on {', '.join(where.hosts or ())}, not on this host ({desired.host})"
            if where is not None
            else f"is not in the desired state ({directory})"
        )
        options.err.print(f"error: {model_id} {why}", markup=False)
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
    host: HostNameOpt = None,
) -> None:
    """Stop every engine this reconciler manages (processes and containers).

    They are recorded as stopped: the next `apply` (or pass of `run`) starts what desired
    state asks for again."""
    out = options.out
    reconciler = _reconciler(Path(DEFAULT_DIR), state_dir, host)
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
    gateway_listen: Annotated[
        str,
        typer.Option(
            "--gateway-listen",
            envvar="RECONCILER_GATEWAY_LISTEN",
            help="OpenAI-compatible gateway address host:port",
        ),
    ] = "127.0.0.1:8000",
    no_gateway: Annotated[
        bool, typer.Option("--no-gateway", help="do not serve the OpenAI-compatible gateway")
    ] = False,
    resync: Annotated[float, typer.Option("--resync", help="seconds between full resyncs")] = 60.0,
    poll: Annotated[float, typer.Option("--poll", help="remote: seconds between fetches")] = 30.0,
    stop_engines_on_exit: Annotated[
        bool, typer.Option("--stop-engines-on-exit", help="stop every engine when the daemon stops")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every pass")] = False,
    state_dir: StateDirOpt = None,
    host: HostNameOpt = None,
) -> None:
    """The daemon: reconcile on every change, commit, engine exit, webhook and resync."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe is noise
    token = os.environ.get("RECONCILER_API_TOKEN") or None
    try:
        split_listen(listen)  # a usage error, not a traceback, for a malformed address
    except ValueError as exc:
        raise usage_error(f"--listen {listen!r}: expected HOST:PORT") from exc
    if not no_api and not is_loopback(listen) and not token:
        raise usage_error(
            f"refusing to listen on {listen} without RECONCILER_API_TOKEN: "
            "a non-loopback API needs a bearer token"
        )
    options = DaemonOptions(
        desired_dir=directory,
        state_dir=private_state_dir(state_dir),
        repo_url=repo,
        branch=branch,
        path=path,
        committed_only=committed_only,
        allow_force_push=allow_force_push,
        stop_engines_on_exit=stop_engines_on_exit,
        loop=LoopSettings(resync_s=resync, poll_s=poll),
    )
    daemon = Daemon(options)
    daemon.reconciler.settings.host_name = host  # in a fleet: the share it reconciles
    where = options.state_dir
    out.print(f"reconciler run: desired state {repo or directory}", markup=False)
    out.print(f"  state file  {where / 'state.yaml'}", markup=False)
    out.print(f"  engine logs {where / 'logs'}", markup=False)
    out.print(f"  event log   {where / 'events.jsonl'}", markup=False)
    gateway = None
    if not no_gateway:
        try:
            split_listen(gateway_listen)
        except ValueError as exc:
            raise usage_error(f"--gateway-listen {gateway_listen!r}: expected HOST:PORT") from exc
        # beyond loopback the gateway refuses every request until cluster.yaml names keys
        gateway = GatewayService(
            gateway_listen,
            where / ROUTES_FILE,
            log_path=where / "logs" / "gateway.log",
            require_keys=not is_loopback(gateway_listen),
        )
    if not no_api:
        # the API process reads the token and the webhook secret from this environment
        api = ApiService(
            daemon,
            listen,
            desired_dir=daemon.reconciler.settings.desired_dir,
            branch=branch,
            gateway_url=gateway.base if gateway is not None else None,  # for its traffic
        )
        daemon.add_service(api)
        out.print(f"  API         {api.url}/api/v1/models", markup=False)
        out.print(f"  metrics     {api.url}/metrics", markup=False)
        out.print(f"  dashboard   {api.url}/", markup=False)
    if gateway is not None:
        attach(daemon, gateway)
        out.print(f"  gateway     {gateway.url}", markup=False)
    try:
        daemon.serve_forever()
    except (GatewayError, ApiError) as exc:
        out.print(f"reconciler run: {exc}", markup=False)
        raise typer.Exit(1) from exc

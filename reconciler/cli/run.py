"""`reconciler run`: the daemon (the loop, the git source), and the HTTP API and the gateway
beside it, each in a process of its own."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from reconciler.api.api_service import ApiError, ApiService, split_listen
from reconciler.gateway.routes import ROUTES_FILE
from reconciler.gateway.service import GatewayError, GatewayService, attach, is_loopback
from reconciler.loop.controller import LoopSettings
from reconciler.loop.daemon import Daemon, DaemonOptions

from . import command_app
from .options import DEFAULT_DIR, DirArg, StateDirOpt, out, private_state_dir, usage_error

app = command_app()


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

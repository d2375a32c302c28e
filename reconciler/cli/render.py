"""`reconciler render kubernetes`: the same specs for a fleet (Kubernetes, synced by Argo CD or
Flux)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from reconciler import kubernetes
from reconciler.cli.loading import Format, print_problems, read_desired, validate_here
from reconciler.core.spec import ID_PATTERN

from . import command_app
from .options import DEFAULT_DIR, DirArg, RevOpt, err, out, usage_error

app = command_app()
render_app = command_app(help="Render desired state for a fleet.", no_args_is_help=True)
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
    """Render Deployments, Services, PriorityClasses, the gateway and a kustomization.yaml into
    OUT."""
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
    from reconciler.gateway.cluster_routes import routes_file  # the gateway's table format

    rendered, problems = kubernetes.render_loaded(raw, result.desired, namespace, routes_file)
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

"""`reconciler hooks`: install the git hooks of a spec repository, and the check they run on a
git server (pre-receive)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.source.hooks import HookError, install_hooks
from reconciler.source.load import LoadError, load_revision_bare

from . import command_app
from .desired import validate_here
from .options import DEFAULT_DIR, err, out, usage_error
from .problems import Format, print_problems

app = command_app()
hooks_app = command_app(help="Git hooks for spec repositories.", no_args_is_help=True)
app.add_typer(hooks_app, name="hooks")


@hooks_app.command("install")
def hooks_install_cmd(
    repo: Annotated[Path, typer.Argument(help="the spec repository")] = Path("."),
    server: Annotated[
        bool, typer.Option("--server", help="a bare repository receiving pushes: pre-receive")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="replace different hooks")] = False,
) -> None:
    """Install the git hooks: pre-commit, post-merge, post-checkout (or pre-receive)."""
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

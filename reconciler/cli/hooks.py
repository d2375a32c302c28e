"""`reconciler hooks`: install the git hooks of hooks/ into a spec repository, and the check they
run on a commit.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli import command_app
from reconciler.cli.loading import Format, print_problems, validate_here
from reconciler.cli.options import DEFAULT_DIR, err, out, usage_error
from reconciler.source.load import LoadError, load_revision_bare
from reconciler.state.directory import atomic_write

CLIENT_HOOKS = ("pre-commit", "post-merge", "post-checkout")
SERVER_HOOKS = ("pre-receive",)
EXECUTABLE = 0o755


class HookError(Exception):
    """The hooks cannot be installed; the message says why and what to do."""


@dataclass(frozen=True)
class Installed:
    name: str
    path: Path
    action: str
    """installed | replaced | unchanged"""


def source_dir() -> Path:
    """The hooks/ directory next to the package (a checkout or an editable install)."""
    override = os.environ.get("RECONCILER_HOOKS_SOURCE")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "hooks"
    if not (path / CLIENT_HOOKS[0]).is_file():
        raise HookError(
            f"{path}: the reconciler's hooks are not there (an installed wheel does not ship "
            "them); set RECONCILER_HOOKS_SOURCE to a checkout's hooks/ directory"
        )
    return path


def hooks_dir(repo_path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Where git runs hooks for this repository (core.hooksPath honoured), and whether bare."""
    import git

    try:
        repo = git.Repo(repo_path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise HookError(f"{repo_path}: not a git repository") from exc
    with contextlib.closing(repo):
        relative = repo.git.rev_parse("--git-path", "hooks")
        return Path(repo.working_dir) / relative, repo.bare


def install_hooks(
    repo_path: str | os.PathLike[str], server: bool = False, force: bool = False
) -> list[Installed]:
    """Install the client hooks, or with `server` the pre-receive hook; all or nothing."""
    target, bare = hooks_dir(repo_path)
    if bare and not server:
        raise HookError(f"{repo_path} is a bare repository: it takes the server hook (--server)")
    source = source_dir()
    names = SERVER_HOOKS if server else CLIENT_HOOKS
    plan = [_plan_one(source / name, target / name) for name in names]
    conflicts = [item.path for item in plan if item.action == "conflict"]
    if conflicts and not force:
        shown = ", ".join(str(p) for p in conflicts)
        raise HookError(f"a different hook is already installed: {shown} (--force replaces it)")
    target.mkdir(parents=True, exist_ok=True)
    done = []
    for item in plan:
        if item.action == "unchanged":
            done.append(item)
            continue
        _copy_executable(source / item.name, item.path)
        done.append(Installed(item.name, item.path, _done_action(item.action)))
    return done


def _plan_one(source: Path, target: Path) -> Installed:
    if not target.exists():
        return Installed(source.name, target, "install")
    if target.read_bytes() == source.read_bytes():
        if not os.access(target, os.X_OK):  # git skips a hook that is not executable
            return Installed(source.name, target, "chmod")
        return Installed(source.name, target, "unchanged")
    return Installed(source.name, target, "conflict")


def _done_action(planned: str) -> str:
    return {"install": "installed", "conflict": "replaced", "chmod": "installed"}[planned]


def _copy_executable(source: Path, target: Path) -> None:
    """Written beside the target, then renamed: git never runs a half-written hook."""
    atomic_write(target, source.read_bytes(), mode=EXECUTABLE)


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

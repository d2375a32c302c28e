"""`reconciler hooks install`: copy the git hooks of hooks/ into a spec repository.

Client hooks (a working clone): pre-commit (validate what is staged), post-merge and
post-checkout (ask the local daemon to reconcile now). Server hook (a bare repository that
receives pushes): pre-receive (reject an invalid push). A different hook already in place is
never overwritten without `force`, and a refusal installs nothing at all.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.state.files import atomic_write

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

"""Restore of one host from a backup archive, safe by construction: nothing in an archive is
trusted but the known file names."""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.source.archive import (
    BUNDLE,
    STATE_PREFIX,
    BackupError,
    Manifest,
    check_members,
    read_manifest,
    sha256_of,
)
from reconciler.source.repo import git_stderr
from reconciler.state.directory import atomic_write

if TYPE_CHECKING:
    import git


@dataclass(frozen=True)
class RestoreResult:
    repo_dir: Path
    desired_dir: Path
    manifest: Manifest
    state_dir: Path
    state_files: list[Path]
    origin_url: str | None
    """where `origin` points now (None: the original URL held credentials, or there was none)"""


def restore_backup(
    archive: str | os.PathLike[str],
    into: str | os.PathLike[str] | None,
    state_dir: str | os.PathLike[str],
    force: bool = False,
) -> RestoreResult:
    """Clone the bundle into `into` (default ./<repo name>) and restore the state records.

    Refuses a non-empty `into`, and a state directory that already holds a state file unless
    `force`: restoring over a live host would make it forget what it runs.
    """
    manifest = read_manifest(archive)
    repo_dir = Path(into) if into is not None else Path.cwd() / manifest.repo_name
    if repo_dir.is_symlink() or (repo_dir.exists() and not repo_dir.is_dir()):
        raise BackupError(f"{repo_dir}: exists and is not a directory")
    if repo_dir.exists() and any(repo_dir.iterdir()):
        raise BackupError(f"{repo_dir}: exists and is not empty")
    target_state = Path(state_dir)
    names = manifest.state_names()  # only known names: read_manifest refused any other
    if not force and any((target_state / name).exists() for name in names):
        raise BackupError(f"{target_state} already holds a state; --force replaces it")
    repo_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reconciler-restore-") as tmp:
        files = _extract(archive, manifest, Path(tmp))
        clone = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}.restore-", dir=repo_dir.parent))
        try:
            origin = _clone_bundle(files[BUNDLE], clone, manifest)
            with contextlib.suppress(FileNotFoundError):
                repo_dir.rmdir()  # empty (checked above): the clone takes its place
            os.rename(clone, repo_dir)
        except BaseException:
            shutil.rmtree(clone, ignore_errors=True)
            raise
        restored = []
        for name in names:
            with open(files[STATE_PREFIX + name], "rb") as source:
                atomic_write(target_state / name, source)
            restored.append(target_state / name)
    desired = repo_dir / manifest.desired_dir if manifest.desired_dir != "." else repo_dir
    return RestoreResult(repo_dir, desired, manifest, target_state, restored, origin)


def _extract(archive: str | os.PathLike[str], manifest: Manifest, into: Path) -> dict[str, Path]:
    """Only the members the manifest names, each checked against its sha256."""
    out: dict[str, Path] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            check_members(archive, tar, manifest)
            present = set(tar.getnames())
            for name, digest in manifest.files.items():
                source = tar.extractfile(name) if name in present else None
                if source is None:
                    raise BackupError(f"{archive}: {name} is missing")
                path = into / name.replace("/", "_")  # flat, fixed names chosen here
                with open(path, "wb") as f:
                    shutil.copyfileobj(source, f)
                if sha256_of(path) != digest:
                    raise BackupError(f"{archive}: {name} is damaged (sha256 mismatch)")
                out[name] = path
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise BackupError(f"{archive}: cannot read the archive ({exc})") from exc
    return out


def _clone_bundle(bundle: Path, repo_dir: Path, manifest: Manifest) -> str | None:
    """Clone, check out the branch at the backed-up HEAD; returns origin's URL (or None)."""
    import git

    try:
        repo = git.Repo.clone_from(str(bundle), repo_dir, no_checkout=True)
    except git.GitCommandError as exc:
        raise BackupError(f"cannot clone the bundle: {git_stderr(exc)}") from exc
    with contextlib.closing(repo):
        try:
            repo.git.cat_file("-e", f"{manifest.head}^{{commit}}")
        except git.GitCommandError:
            raise BackupError(
                f"the bundle does not hold the backed-up head {manifest.head[:12]}: "
                "the archive is incomplete; nothing was restored"
            ) from None
        try:
            return _check_out(repo, manifest)
        except git.GitCommandError as exc:
            raise BackupError(f"cannot check out {manifest.head[:12]}: {git_stderr(exc)}") from exc


def _check_out(repo: git.Repo, manifest: Manifest) -> str | None:
    if manifest.branch:
        repo.git.checkout("-B", manifest.branch, manifest.head)
    else:
        repo.git.checkout("--detach", manifest.head)
    # the bundle was a temporary file: point origin where the original pointed, or nowhere
    if not manifest.origin_url or "***@" in manifest.origin_url:
        repo.delete_remote(repo.remotes.origin)
        return None
    repo.remotes.origin.set_url(manifest.origin_url)
    if manifest.branch and f"origin/{manifest.branch}" in [ref.name for ref in repo.refs]:
        repo.git.branch("--set-upstream-to", f"origin/{manifest.branch}", manifest.branch)
    return manifest.origin_url

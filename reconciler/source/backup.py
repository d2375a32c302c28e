"""Backup and restore of one host: the spec repository (a git bundle of every ref) and the state.

One archive (tar.gz) holds `manifest.json`, `repo.bundle` and the state directory's records
(`state.yaml`, `last-valid-desired.json`, `events.jsonl` when present). Engine logs are not
kept: they are diagnostics, and engines are observed afresh after a restore anyway. Restoring
clones the bundle (the branch checked out) and puts the records in the state directory; the next
pass adopts the engines that still run and starts what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reconciler.source.git import SourceError, head_commit, relative_dir, require_repo, uncommitted

FORMAT = 1
MANIFEST = "manifest.json"
BUNDLE = "repo.bundle"
STATE_PREFIX = "state/"


class BackupError(Exception):
    """A backup cannot be written or an archive cannot be restored; the message says why."""


@dataclass(frozen=True)
class Manifest:
    created: str
    """ISO 8601, UTC"""
    head: str
    branch: str | None
    """None when HEAD was detached"""
    desired_dir: str
    """the desired-state directory, relative to the repository's top"""
    repo_name: str
    origin_url: str | None
    """without credentials"""
    reconciler_version: str
    files: dict[str, str] = field(default_factory=dict)
    """archive member -> sha256"""
    format: int = FORMAT


@dataclass(frozen=True)
class BackupResult:
    archive: Path
    manifest: Manifest
    warnings: list[str]


@dataclass(frozen=True)
class RestoreResult:
    repo_dir: Path
    desired_dir: Path
    manifest: Manifest
    state_dir: Path
    state_files: list[Path]
    origin_url: str | None
    """where `origin` points now (None: the original URL held credentials, or there was none)"""


# ---- backup ----------------------------------------------------------------------------------


def _state_files() -> tuple[str, ...]:
    from reconciler.state.paths import EVENTS_FILE, LAST_VALID_FILE, STATE_FILE

    return (STATE_FILE, LAST_VALID_FILE, EVENTS_FILE)


def create_backup(
    out: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
) -> BackupResult:
    """Write the archive atomically (a temp file renamed into place)."""
    try:
        repo = require_repo(directory)
    except SourceError as exc:
        raise BackupError(str(exc)) from exc
    with contextlib.closing(repo), tempfile.TemporaryDirectory(prefix="reconciler-backup-") as tmp:
        head = head_commit(repo)
        if head is None:
            raise BackupError(f"{directory}: the repository has no commits to back up")
        rel = relative_dir(repo, directory)
        warnings = _uncommitted_warning(repo, rel)
        bundle = Path(tmp) / BUNDLE
        repo.git.bundle("create", str(bundle), "--all")
        members = {BUNDLE: bundle}
        for name in _state_files():
            path = Path(state_dir) / name
            if path.is_file():
                members[STATE_PREFIX + name] = path
        if STATE_PREFIX + _state_files()[0] not in members:
            warnings.append(f"no state file in {state_dir}: the backup holds the repository only")
        manifest = Manifest(
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            head=head.hexsha,
            branch=_branch(repo),
            desired_dir=rel,
            repo_name=Path(repo.working_tree_dir or directory).name,
            origin_url=_origin_url(repo),
            reconciler_version=_version(),
            files={name: _sha256(path) for name, path in members.items()},
        )
        target = Path(out)
        _write_archive(target, manifest, members)
    return BackupResult(target, manifest, warnings)


def _uncommitted_warning(repo: Any, rel: str) -> list[str]:
    dirty = uncommitted(repo, rel)
    if not dirty:
        return []
    return [f"uncommitted changes under {rel} are not in the backup: {', '.join(dirty)}"]


def _branch(repo: Any) -> str | None:
    try:
        return repo.active_branch.name
    except TypeError:  # detached HEAD
        return None


def _origin_url(repo: Any) -> str | None:
    from reconciler.source.git import _redact

    for remote in repo.remotes:
        if remote.name == "origin":
            return _redact(remote.url)
    return None


def _version() -> str:
    from reconciler import __version__

    return __version__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_archive(target: Path, manifest: Manifest, members: dict[str, Path]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            data = json.dumps(asdict(manifest), indent=2, sort_keys=True).encode() + b"\n"
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
            for name, path in members.items():
                tar.add(path, arcname=name, recursive=False)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


# ---- restore ---------------------------------------------------------------------------------


def read_manifest(archive: str | os.PathLike[str]) -> Manifest:
    """The manifest of an archive, checked for its format."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile(MANIFEST)
            if member is None:
                raise BackupError(f"{archive}: no {MANIFEST}")
            doc = json.loads(member.read())
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise BackupError(f"{archive}: not a reconciler backup ({exc})") from exc
    if doc.get("format") != FORMAT:
        raise BackupError(f"{archive}: backup format {doc.get('format')}; this reads {FORMAT}")
    try:
        return Manifest(**doc)
    except TypeError as exc:
        raise BackupError(f"{archive}: manifest does not match format {FORMAT} ({exc})") from exc


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
    if repo_dir.exists() and any(repo_dir.iterdir()):
        raise BackupError(f"{repo_dir}: exists and is not empty")
    target_state = Path(state_dir)
    state_names = [n for n in manifest.files if n.startswith(STATE_PREFIX)]
    existing = [target_state / n[len(STATE_PREFIX) :] for n in state_names]
    if not force and any(p.exists() for p in existing):
        raise BackupError(f"{target_state} already holds a state; --force replaces it")
    with tempfile.TemporaryDirectory(prefix="reconciler-restore-") as tmp:
        files = _extract(archive, manifest, Path(tmp))
        origin = _clone_bundle(files[BUNDLE], repo_dir, manifest)
        restored = [_put(files[n], target_state / n[len(STATE_PREFIX) :]) for n in state_names]
    desired = repo_dir / manifest.desired_dir if manifest.desired_dir != "." else repo_dir
    return RestoreResult(repo_dir, desired, manifest, target_state, restored, origin)


def _extract(archive: str | os.PathLike[str], manifest: Manifest, into: Path) -> dict[str, Path]:
    """Only the members the manifest names, each checked against its sha256."""
    out: dict[str, Path] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for name, digest in manifest.files.items():
            source = tar.extractfile(name) if name in tar.getnames() else None
            if source is None:
                raise BackupError(f"{archive}: {name} is missing")
            path = into / name.replace("/", "_")  # flat: no member can write outside `into`
            with open(path, "wb") as f:
                shutil.copyfileobj(source, f)
            if _sha256(path) != digest:
                raise BackupError(f"{archive}: {name} is damaged (sha256 mismatch)")
            out[name] = path
    if BUNDLE not in out:
        raise BackupError(f"{archive}: no {BUNDLE}")
    return out


def _clone_bundle(bundle: Path, repo_dir: Path, manifest: Manifest) -> str | None:
    """Clone, check out the branch at the backed-up HEAD; returns origin's URL (or None)."""
    import git

    try:
        repo = git.Repo.clone_from(str(bundle), repo_dir, no_checkout=True)
    except git.GitCommandError as exc:
        raise BackupError(f"cannot clone the bundle: {exc.stderr.strip()}") from exc
    with contextlib.closing(repo):
        if manifest.branch:
            repo.git.checkout("-B", manifest.branch, manifest.head)
        else:
            repo.git.checkout("--detach", manifest.head)
        # the bundle was a temporary file: point origin where the original pointed, or nowhere
        if not manifest.origin_url or "***@" in manifest.origin_url:
            repo.delete_remote(repo.remotes.origin)
            return None
        repo.remotes.origin.set_url(manifest.origin_url)
        if manifest.branch and f"origin/{manifest.branch}" in [r.name for r in repo.refs]:
            repo.git.branch("--set-upstream-to", f"origin/{manifest.branch}", manifest.branch)
        return manifest.origin_url


def _put(source: Path, target: Path) -> Path:
    """Copy into place atomically, so that a reconciler starting meanwhile sees old or new."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.restore.tmp")
    shutil.copyfile(source, temp)
    os.replace(temp, target)
    return target

"""Backup of one host: the spec repository (a git bundle of every ref) and the state records.

One archive (tar.gz) holds `manifest.json`, `repo.bundle` and the state directory's records
(`state.yaml`, `last-valid-desired.json`, `events.jsonl` when present); see archive.py for the
format. Restoring is restore.py's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reconciler.source.archive import (
    BUNDLE,
    MANIFEST,
    STATE_FILES,
    STATE_PREFIX,
    BackupError,
    Manifest,
    RestoreResult,
    read_manifest,
    restore_backup,
    sha256_of,
)
from reconciler.source.repo import (
    SourceError,
    head_commit,
    redact_url,
    relative_dir,
    require_repo,
    uncommitted,
)
from reconciler.state.directory import STATE_FILE, atomic_write

__all__ = [
    "MANIFEST",
    "BackupError",
    "BackupResult",
    "Manifest",
    "RestoreResult",
    "create_backup",
    "read_manifest",
    "restore_backup",
]


@dataclass(frozen=True)
class BackupResult:
    archive: Path
    manifest: Manifest
    warnings: list[str]


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
        for name in STATE_FILES:
            path = Path(state_dir) / name
            if path.is_file():
                members[STATE_PREFIX + name] = path
        if STATE_PREFIX + STATE_FILE not in members:
            warnings.append(f"no state file in {state_dir}: the backup holds the repository only")
        manifest = Manifest(
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            head=head.hexsha,
            branch=_branch(repo),
            desired_dir=rel,
            repo_name=Path(repo.working_tree_dir or directory).name,
            origin_url=_origin_url(repo),
            reconciler_version=_version(),
            files={name: sha256_of(path) for name, path in members.items()},
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
    for remote in repo.remotes:
        if remote.name == "origin":
            return redact_url(remote.url, keep_path=True)
    return None


def _version() -> str:
    from reconciler import __version__

    return __version__


def _write_archive(target: Path, manifest: Manifest, members: dict[str, Path]) -> None:
    """Built in an anonymous temp file, then put in place by the one atomic write."""
    with tempfile.TemporaryFile() as raw:
        with tarfile.open(fileobj=raw, mode="w:gz") as tar:
            data = json.dumps(asdict(manifest), indent=2, sort_keys=True).encode() + b"\n"
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
            for name, path in members.items():
                tar.add(path, arcname=name, recursive=False)
        raw.seek(0)
        atomic_write(target, raw)

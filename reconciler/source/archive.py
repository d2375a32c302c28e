"""The backup archive of one host: the spec repository (a git bundle of every ref) and the state
records, its format, and the checks that make an archive safe to restore (restore.py restores).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from reconciler.source.repo import (
    SourceError,
    head_commit,
    redact_url,
    relative_dir,
    require_repo,
    uncommitted,
)
from reconciler.state.directory import EVENTS_FILE, LAST_VALID_FILE, STATE_FILE, atomic_write

FORMAT = 1
MANIFEST = "manifest.json"
BUNDLE = "repo.bundle"
STATE_PREFIX = "state/"
STATE_FILES = (STATE_FILE, LAST_VALID_FILE, EVENTS_FILE)
"""The state directory's records a backup holds; engine logs are diagnostics, not kept."""
KNOWN_MEMBERS = frozenset({BUNDLE, *(STATE_PREFIX + name for name in STATE_FILES)})
MAX_MANIFEST_BYTES = 1 << 20

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")
_REPO_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


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

    def state_names(self) -> list[str]:
        """The state files this backup holds, as bare file names."""
        return [n[len(STATE_PREFIX) :] for n in self.files if n.startswith(STATE_PREFIX)]


def read_manifest(archive: str | os.PathLike[str]) -> Manifest:
    """The manifest of an archive, checked for its format and for names outside the known ones."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.getmember(MANIFEST)
            if not member.isreg() or member.size > MAX_MANIFEST_BYTES:
                raise BackupError(f"{archive}: {MANIFEST} is not a small regular file")
            source = tar.extractfile(member)
            if source is None:
                raise BackupError(f"{archive}: no {MANIFEST}")
            doc = json.loads(source.read())
    except (OSError, EOFError, tarfile.TarError, KeyError, ValueError) as exc:
        raise BackupError(f"{archive}: not a reconciler backup ({exc})") from exc
    if not isinstance(doc, dict):
        raise BackupError(f"{archive}: not a reconciler backup (the manifest is not an object)")
    if doc.get("format") != FORMAT:
        raise BackupError(f"{archive}: backup format {doc.get('format')}; this reads {FORMAT}")
    known = {f.name for f in fields(Manifest)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise BackupError(f"{archive}: manifest fields {unknown} are not format {FORMAT}'s")
    try:
        manifest = Manifest(**doc)
    except TypeError as exc:
        raise BackupError(f"{archive}: manifest does not match format {FORMAT} ({exc})") from exc
    _check_manifest(str(archive), manifest)
    return manifest


def _check_manifest(archive: str, m: Manifest) -> None:
    def refuse(what: str) -> BackupError:
        return BackupError(f"{archive}: refusing the archive: {what}")

    if not isinstance(m.files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in m.files.items()
    ):
        raise refuse("the manifest's files are not a mapping of names to sha256 digests")
    outside = sorted(name for name in m.files if name not in KNOWN_MEMBERS)
    if outside:
        names = ", ".join(sorted(KNOWN_MEMBERS))
        raise refuse(f"the manifest lists {outside}, outside the known files ({names})")
    if BUNDLE not in m.files:
        raise refuse(f"the manifest lists no {BUNDLE}")
    if not isinstance(m.head, str) or not _SHA.fullmatch(m.head):
        raise refuse(f"head {m.head!r} is not a commit id")
    if m.branch is not None and not _branch_ok(m.branch):
        raise refuse(f"branch {m.branch!r} is not a plain branch name")
    if not isinstance(m.repo_name, str) or not _REPO_NAME.fullmatch(m.repo_name):
        raise refuse(f"repository name {m.repo_name!r} is not a plain directory name")
    if not _relative_ok(m.desired_dir):
        raise refuse(f"desired_dir {m.desired_dir!r} is not a path inside the repository")
    if m.origin_url is not None and not isinstance(m.origin_url, str):
        raise refuse("origin_url is not text")


def _branch_ok(branch: object) -> bool:
    return (
        isinstance(branch, str)
        and _BRANCH.fullmatch(branch) is not None
        and ".." not in branch
        and not branch.endswith((".lock", "/", "."))
    )


def _relative_ok(path: object) -> bool:
    if not isinstance(path, str) or not path or "\\" in path or "\0" in path:
        return False
    parts = PurePosixPath(path).parts
    return not PurePosixPath(path).is_absolute() and ".." not in parts


def check_members(archive: str | os.PathLike[str], tar: tarfile.TarFile, m: Manifest) -> None:
    """Every member is a regular file under a known name; anything else refuses the archive."""
    allowed = {MANIFEST, *m.files}
    for member in tar.getmembers():
        name = member.name
        if name.startswith("/") or PurePosixPath(name).is_absolute():
            why = "an absolute path"
        elif ".." in PurePosixPath(name).parts:
            why = "a path that climbs out with '..'"
        elif member.issym() or member.islnk():
            why = f"a link (to {member.linkname!r})"
        elif not member.isreg():
            why = "not a regular file (a device, FIFO or directory)"
        elif name not in allowed:
            why = "not one of the files a backup holds"
        else:
            continue
        raise BackupError(f"{archive}: refusing the archive: member {name!r} is {why}")


if TYPE_CHECKING:
    import git


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


def _uncommitted_warning(repo: git.Repo, rel: str) -> list[str]:
    dirty = uncommitted(repo, rel)
    if not dirty:
        return []
    return [f"uncommitted changes under {rel} are not in the backup: {', '.join(dirty)}"]


def _branch(repo: git.Repo) -> str | None:
    try:
        return repo.active_branch.name
    except TypeError:  # detached HEAD
        return None


def _origin_url(repo: git.Repo) -> str | None:
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

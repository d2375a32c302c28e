"""The backup archive of one host: the spec repository (a git bundle of every ref) and the state
records; its format; the checks that make an archive safe; and restoring a host from one, safe
by construction (nothing in an archive is trusted but the known file names).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from reconciler.source.repo import (
    SourceError,
    git_stderr,
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

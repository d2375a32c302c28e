"""The backup archive's format, and the checks that make an archive safe to restore.

A restore trusts nothing in an archive but the known file names: the manifest may only list
`repo.bundle` and the state directory's known files (reconciler.state.paths), every tar member
must be a regular file under one of those names (no absolute path, no `..`, no link, no device),
and the manifest's other fields must have the shape this host would have written.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass, field, fields
from pathlib import PurePosixPath
from typing import Any

from reconciler.state.paths import EVENTS_FILE, LAST_VALID_FILE, STATE_FILE

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


def _branch_ok(branch: Any) -> bool:
    return (
        isinstance(branch, str)
        and _BRANCH.fullmatch(branch) is not None
        and ".." not in branch
        and not branch.endswith((".lock", "/", "."))
    )


def _relative_ok(path: Any) -> bool:
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

"""Issue 14, case 3: `reconciler restore` trusts nothing in an archive but the known file names.

First release: state-file names came from the archive's manifest and were joined onto the state
directory unchecked, so a crafted archive wrote outside it (`state/../../x`, an absolute name),
exit 0; a bundle whose head is missing ended in a GitCommandError traceback and a half-restored
repository. Each crafted archive here starts from a real `reconciler backup` and changes one
thing; every restore must exit 1 with a message naming what it refused, write nothing outside
the state directory, and leave neither a repository nor state records behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from cli_support import run_cli

MODEL = "id: a\nframework: vllm\nmodel_path: org/a\nresource_requirements: {gpu_memory_mb: 1000}\n"


def git(cwd: Path, *args: str) -> None:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1"}
    identity = ["-c", "user.name=Op", "-c", "user.email=op@example.com"]
    subprocess.run(["git", *identity, *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A genuine backup of a spec repository and a state directory."""
    repo = tmp_path / "origin" / "specs"
    (repo / "desired-state" / "models").mkdir(parents=True)
    (repo / "desired-state" / "models" / "a.yaml").write_text(MODEL)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a")
    state = tmp_path / "origin" / "state"
    state.mkdir()
    (state / "events.jsonl").write_text('{"kind": "applied", "revision": "x"}\n')
    (state / "last-valid-desired.json").write_text('{"revision": null}\n')
    target = tmp_path / "backup.tar.gz"
    proc = run_cli(
        "backup", str(target), str(repo / "desired-state"), "--state-dir", str(state), cwd=repo
    )
    assert proc.returncode == 0, proc.stderr
    return target


def rewrite(
    archive: Path,
    target: Path,
    *,
    add: dict[str, bytes | str] | None = None,
    manifest: dict[str, object] | None = None,
) -> Path:
    """A copy of `archive` with members added (bytes: a file, str: a symlink to that target),
    the manifest listing each added file with its true sha256, and manifest fields replaced."""
    add = add or {}
    with tarfile.open(archive) as src:
        members = {m.name: (m, src.extractfile(m).read()) for m in src.getmembers()}
    doc = json.loads(members.pop("manifest.json")[1])
    doc.update(manifest or {})
    for name, content in add.items():
        data = content if isinstance(content, bytes) else b""
        doc["files"][name] = hashlib.sha256(data).hexdigest()
    with tarfile.open(target, "w:gz") as dst:
        body = json.dumps(doc).encode()
        dst.addfile(_info("manifest.json", len(body)), io.BytesIO(body))
        for member, data in members.values():
            dst.addfile(member, io.BytesIO(data))
        for name, content in add.items():
            if isinstance(content, bytes):
                dst.addfile(_info(name, len(content)), io.BytesIO(content))
            else:
                link = _info(name, 0)
                link.type, link.linkname = tarfile.SYMTYPE, content
                dst.addfile(link)
    return target


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info


def restore(archive: Path, place: Path) -> tuple[int, str]:
    proc = run_cli(
        "restore",
        str(archive),
        "--into",
        str(place / "repo"),
        "--state-dir",
        str(place / "state"),
        cwd=place,
    )
    return proc.returncode, proc.stdout + proc.stderr


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def place(tmp_path: Path) -> Path:
    place = tmp_path / "a" / "b" / "host"
    place.mkdir(parents=True)
    return place


def test_the_genuine_archive_restores(archive: Path, place: Path) -> None:
    code, output = restore(archive, place)
    assert code == 0, output
    assert (place / "repo" / "desired-state" / "models" / "a.yaml").read_text() == MODEL
    assert (place / "state" / "events.jsonl").is_file()


def test_a_dot_dot_name_writes_nothing_outside(archive: Path, place: Path, tmp_path: Path) -> None:
    evil = rewrite(archive, tmp_path / "evil.tar.gz", add={"state/../../escaped": b"pwned\n"})
    before = files_under(tmp_path)
    code, output = restore(evil, place)
    assert code == 1, output
    assert "state/../../escaped" in output
    assert not (place / "escaped").exists() and not (place.parent / "escaped").exists()
    assert files_under(tmp_path) == before  # no repository, no state, nothing elsewhere


def test_an_absolute_name_writes_nothing_outside(
    archive: Path, place: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "absolute-escape"
    evil = rewrite(archive, tmp_path / "evil.tar.gz", add={f"state/{outside}": b"pwned\n"})
    before = files_under(tmp_path)
    code, output = restore(evil, place)
    assert code == 1, output
    assert str(outside) in output
    assert not outside.exists()
    assert files_under(tmp_path) == before


def test_an_absolute_member_is_refused(archive: Path, place: Path, tmp_path: Path) -> None:
    outside = tmp_path / "member-escape"
    evil = rewrite(archive, tmp_path / "evil.tar.gz", add={str(outside): b"pwned\n"})
    before = files_under(tmp_path)
    code, output = restore(evil, place)
    assert code == 1, output
    assert str(outside).lstrip("/") in output
    assert files_under(tmp_path) == before


def test_a_link_member_is_refused(archive: Path, place: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n")
    evil = rewrite(archive, tmp_path / "evil.tar.gz", add={"state/state.yaml": str(secret)})
    before = files_under(tmp_path)
    code, output = restore(evil, place)
    assert code == 1, output
    assert "state/state.yaml" in output and "link" in output
    assert files_under(tmp_path) == before
    assert secret.read_text() == "host secret\n"


def test_an_unknown_state_file_is_refused(archive: Path, place: Path, tmp_path: Path) -> None:
    evil = rewrite(archive, tmp_path / "evil.tar.gz", add={"state/authorized_keys": b"ssh-rsa\n"})
    before = files_under(tmp_path)
    code, output = restore(evil, place)
    assert code == 1, output
    assert "state/authorized_keys" in output
    assert files_under(tmp_path) == before


def test_a_bundle_without_its_head_is_a_clear_error(
    archive: Path, place: Path, tmp_path: Path
) -> None:
    missing = "1234567890abcdef1234567890abcdef12345678"
    evil = rewrite(archive, tmp_path / "evil.tar.gz", manifest={"head": missing})
    before = files_under(tmp_path)
    code, output = restore(evil, place)
    assert code == 1, output
    assert missing[:12] in output
    assert "GitCommandError" not in output
    assert files_under(tmp_path) == before  # nothing half-restored

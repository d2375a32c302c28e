"""`reconciler backup` / `restore`: one archive holding a git bundle of the spec repository and
the state directory's records; a restored host converges to the same plan as the original.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import git
import pytest
from cli_support import run_cli

from reconciler.core.instance import InstanceRecord, Status
from reconciler.source.archive import MANIFEST, BackupError, read_manifest, restore_backup
from reconciler.state.statefile import State, write_state

MODEL = (
    "id: {id}\nframework: vllm\nmodel_path: /models/{id}\npriority: {priority}\n"
    "resource_requirements: {{gpu_count: 1, gpu_memory_mb: {memory}}}\nenabled: true\n"
)
CLUSTER = """\
gpus:
  - {index: 0, name: sim, memory_mb: 24000}
  - {index: 1, name: sim, memory_mb: 24000}
"""


def model(model_id: str, priority: int = 5, memory: int = 8000) -> str:
    return MODEL.format(id=model_id, priority=priority, memory=memory)


def reconciler(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


def commit(repo: git.Repo, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = Path(repo.working_tree_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    repo.git.add("-A")
    repo.git.commit("-q", "-m", message)
    return repo.head.commit.hexsha


@pytest.fixture
def host(tmp_path: Path) -> tuple[git.Repo, Path]:
    """A spec repository (nested in a subdirectory, two branches) and a state directory in which
    a runs on GPU 0 and b was preempted: the next plan starts b and c."""
    repo = git.Repo.init(tmp_path / "original" / "specs", initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test Operator")
        config.set_value("user", "email", "ops@example.com")
    ds = "deploy/desired-state"
    commit(repo, {f"{ds}/cluster.yaml": CLUSTER, f"{ds}/models/a.yaml": model("a", 9)}, "Add a")
    repo.git.branch("staging")
    commit(repo, {f"{ds}/models/b.yaml": model("b", 3), f"{ds}/models/c.yaml": model("c")}, "b c")
    repo.create_remote("origin", "https://git.example.com/ops/specs.git")
    state_dir = tmp_path / "original" / "state"
    state = State(
        revision=repo.head.commit.hexsha,
        applied_at=1700000000.0,
        models={
            "a": InstanceRecord(
                "a", Status.running, pid=None, port=8100, gpus=(0,), memory_mb=8000
            ),
            "b": InstanceRecord("b", Status.preempted, restarts_total=1),
        },
    )
    write_state(state_dir / "state.yaml", state)
    (state_dir / "last-valid-desired.json").write_text('{"revision": null}\n')
    (state_dir / "events.jsonl").write_text('{"kind": "applied", "revision": "x"}\n')
    return repo, state_dir


def plan_json(directory: Path, observed: Path) -> dict:
    proc = reconciler(
        "plan", str(directory), "--observed", str(observed), "--format", "json", cwd=directory
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_restored_host_converges_to_the_same_plan(host, tmp_path: Path) -> None:
    repo, state_dir = host
    desired = Path(repo.working_tree_dir) / "deploy" / "desired-state"
    archive = tmp_path / "backups" / "host.tar.gz"
    made = reconciler(
        "backup", str(archive), str(desired), "--state-dir", str(state_dir), cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    assert f"at {repo.head.commit.hexsha[:12]} (main)" in made.stdout

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    restored = reconciler(
        "restore",
        str(archive),
        "--into",
        str(fresh / "specs"),
        "--state-dir",
        str(fresh / "state"),
        cwd=fresh,
    )
    assert restored.returncode == 0, restored.stderr
    assert "next: reconciler apply" in restored.stdout

    clone = git.Repo(fresh / "specs")
    assert clone.active_branch.name == "main"
    assert clone.head.commit.hexsha == repo.head.commit.hexsha
    assert clone.commit("origin/staging").hexsha == repo.commit("staging").hexsha  # all refs
    assert clone.remotes.origin.url == "https://git.example.com/ops/specs.git"
    assert not clone.is_dirty(untracked_files=True)
    for name in ("state.yaml", "last-valid-desired.json", "events.jsonl"):
        assert (fresh / "state" / name).read_bytes() == (state_dir / name).read_bytes()

    restored_desired = fresh / "specs" / "deploy" / "desired-state"
    original_plan = plan_json(desired, state_dir / "state.yaml")
    assert [a["action"] for a in original_plan["actions"]] == ["start", "start"]
    assert original_plan == plan_json(restored_desired, fresh / "state" / "state.yaml")
    assert original_plan == plan_json(restored_desired, state_dir / "state.yaml")


def test_manifest_describes_the_backup(host, tmp_path: Path) -> None:
    repo, state_dir = host
    archive = tmp_path / "host.tar.gz"
    desired = Path(repo.working_tree_dir) / "deploy" / "desired-state"
    reconciler("backup", str(archive), str(desired), "--state-dir", str(state_dir), cwd=tmp_path)
    manifest = read_manifest(archive)
    assert manifest.head == repo.head.commit.hexsha
    assert manifest.branch == "main"
    assert manifest.desired_dir == "deploy/desired-state"
    assert manifest.repo_name == "specs"
    assert manifest.reconciler_version
    assert manifest.created.endswith("Z")
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted([MANIFEST, *manifest.files])
    assert set(manifest.files) == {
        "repo.bundle",
        "state/state.yaml",
        "state/last-valid-desired.json",
        "state/events.jsonl",
    }


def test_backup_warns_about_uncommitted_changes(host, tmp_path: Path) -> None:
    repo, state_dir = host
    desired = Path(repo.working_tree_dir) / "deploy" / "desired-state"
    (desired / "models" / "d.yaml").write_text(model("d"))
    proc = reconciler(
        "backup",
        str(tmp_path / "b.tar.gz"),
        str(desired),
        "--state-dir",
        str(state_dir),
        cwd=tmp_path,
    )
    assert proc.returncode == 0
    assert "warning: uncommitted changes" in proc.stderr and "models/d.yaml" in proc.stderr


def test_restore_refuses_to_overwrite(host, tmp_path: Path) -> None:
    repo, state_dir = host
    archive = tmp_path / "host.tar.gz"
    desired = Path(repo.working_tree_dir) / "deploy" / "desired-state"
    reconciler("backup", str(archive), str(desired), "--state-dir", str(state_dir), cwd=tmp_path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(archive, busy, tmp_path / "s1")
    with pytest.raises(BackupError, match="already holds a state"):
        restore_backup(archive, tmp_path / "r2", state_dir)  # a live host's state directory
    assert not (tmp_path / "r2").exists()
    done = restore_backup(archive, tmp_path / "r3", state_dir, force=True)
    assert done.desired_dir == tmp_path / "r3" / "deploy" / "desired-state"


def test_damaged_archive_is_rejected(host, tmp_path: Path) -> None:
    repo, state_dir = host
    archive = tmp_path / "host.tar.gz"
    desired = Path(repo.working_tree_dir) / "deploy" / "desired-state"
    reconciler("backup", str(archive), str(desired), "--state-dir", str(state_dir), cwd=tmp_path)
    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(damaged, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "state/state.yaml":
                data = data.replace(b"running", b"stopped")
            dst.addfile(member, io.BytesIO(data))
    proc = reconciler(
        "restore",
        str(damaged),
        "--into",
        str(tmp_path / "r"),
        "--state-dir",
        str(tmp_path / "s"),
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "damaged" in proc.stderr
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(BackupError, match="not a reconciler backup"):
        read_manifest(junk)


# ---- hostile archives: restore trusts nothing but the known file names ------------------------


def backup_of(host, tmp_path: Path) -> Path:
    repo, state_dir = host
    archive = tmp_path / "host.tar.gz"
    desired = Path(repo.working_tree_dir) / "deploy" / "desired-state"
    reconciler("backup", str(archive), str(desired), "--state-dir", str(state_dir), cwd=tmp_path)
    return archive


def rewrite(
    archive: Path,
    out: Path,
    manifest: dict | None = None,
    extra: list[tuple[tarfile.TarInfo, bytes]] = (),
    replace: dict[str, bytes] | None = None,
) -> Path:
    """A copy of `archive` with another manifest, replaced member data and extra members."""
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == MANIFEST and manifest is not None:
                data = json.dumps(manifest).encode()
            elif replace and member.name in replace:
                data = replace[member.name]
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
        for info, data in extra:
            dst.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out


def manifest_of(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        return json.loads(tar.extractfile(MANIFEST).read())


def restore_cli(archive: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return reconciler(
        "restore",
        str(archive),
        "--into",
        str(tmp_path / "restored"),
        "--state-dir",
        str(tmp_path / "area" / "state"),
        cwd=tmp_path,
    )


def nothing_restored(tmp_path: Path) -> None:
    assert not (tmp_path / "restored").exists()
    assert not (tmp_path / "area" / "state").exists()
    assert not list(tmp_path.glob(".restored.restore-*"))  # no temp clone left behind


@pytest.mark.parametrize(
    "name", ["state/../../escaped.yaml", "/tmp/absolute-escape.yaml", "state/notes.txt"]
)
def test_manifest_entries_outside_the_known_files_are_refused(host, tmp_path, name) -> None:
    archive = backup_of(host, tmp_path)
    manifest = manifest_of(archive)
    manifest["files"][name] = manifest["files"]["state/state.yaml"]
    info = tarfile.TarInfo(name)
    data = (tmp_path / "original" / "state" / "state.yaml").read_bytes()
    info.size = len(data)
    crafted = rewrite(archive, tmp_path / "crafted.tar.gz", manifest, [(info, data)])
    proc = restore_cli(crafted, tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "refusing the archive" in proc.stderr and "outside the known files" in proc.stderr
    assert (
        not (tmp_path / "escaped.yaml").exists() and not Path("/tmp/absolute-escape.yaml").exists()
    )
    nothing_restored(tmp_path)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("symlink", "a link"),
        ("hardlink", "a link"),
        ("fifo", "not a regular file"),
        ("dotdot", "'..'"),
        ("absolute", "an absolute path"),
    ],
)
def test_tar_members_that_are_not_plain_known_files_are_refused(
    host, tmp_path, kind, expected
) -> None:
    archive = backup_of(host, tmp_path)
    info = tarfile.TarInfo(
        {"dotdot": "state/../../x", "absolute": "/etc/x"}.get(kind, "state/extra")
    )
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "repo.bundle"
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    else:
        info.size = 1
    extra = [(info, b"x")]
    crafted = rewrite(archive, tmp_path / "crafted.tar.gz", extra=extra)
    proc = restore_cli(crafted, tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "refusing the archive" in proc.stderr and expected in proc.stderr
    nothing_restored(tmp_path)


def test_manifest_fields_that_would_steer_git_or_paths_are_refused(host, tmp_path) -> None:
    archive = backup_of(host, tmp_path)
    manifest = manifest_of(archive)
    for field, value, words in [
        ("branch", "--upload-pack=touch /tmp/x", "branch"),
        ("repo_name", "../outside", "repository name"),
        ("desired_dir", "../../etc", "desired_dir"),
        ("head", "HEAD --all", "head"),
    ]:
        crafted = rewrite(archive, tmp_path / "crafted.tar.gz", {**manifest, field: value})
        with pytest.raises(BackupError, match=words):
            restore_backup(crafted, tmp_path / "restored", tmp_path / "area" / "state")
        nothing_restored(tmp_path)


def test_a_bundle_without_the_head_is_a_clear_error_and_restores_nothing(host, tmp_path) -> None:
    repo, _ = host
    archive = backup_of(host, tmp_path)
    # a bundle of the older branch only: the backed-up head is not in it
    partial = tmp_path / "partial.bundle"
    repo.git.bundle("create", str(partial), "staging")
    data = partial.read_bytes()
    manifest = manifest_of(archive)
    manifest["files"]["repo.bundle"] = hashlib.sha256(data).hexdigest()
    crafted = rewrite(archive, tmp_path / "crafted.tar.gz", manifest, replace={"repo.bundle": data})
    proc = restore_cli(crafted, tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "does not hold the backed-up head" in proc.stderr
    nothing_restored(tmp_path)

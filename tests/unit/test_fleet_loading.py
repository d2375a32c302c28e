"""hosts/<name>.yaml is read wherever models/ is: the working tree, git's index (pre-commit) and a
revision (pre-receive, plan --base/--head), with the same rules for links and sizes."""

from __future__ import annotations

import os
from pathlib import Path

import git
import pytest

from reconciler.core.desired import RawDesiredState
from reconciler.source.load import (
    MAX_SPEC_BYTES,
    is_spec_path,
    load_directory,
    load_revision,
    load_staged,
)

HOST = "gateway: http://10.0.0.1:8000\nplacement: pack\n"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> git.Repo:
    monkeypatch.setenv("GIT_AUTHOR_NAME", "t")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@example.com")
    monkeypatch.delenv("GIT_INDEX_FILE", raising=False)
    (tmp_path / "ds" / "hosts").mkdir(parents=True)
    (tmp_path / "ds" / "hosts" / "a.yaml").write_text(HOST)
    (tmp_path / "ds" / "hosts" / "notes.txt").write_text("not a spec")
    return git.Repo.init(tmp_path)


def hosts_of(raw: RawDesiredState) -> dict[str, object]:
    """host file name -> its placement, of every host file read."""
    return {d.file.rsplit("/", 1)[-1]: d.data.get("placement") for d in raw.hosts}


@pytest.mark.parametrize(
    ("path", "holds"),
    [
        ("hosts/a.yaml", True),
        ("hosts/a.yml", True),
        ("hosts/.a.yaml", False),
        ("hosts/x/a.yaml", False),
        ("hosts/a.txt", False),
        ("models/m.yaml", True),
        ("cluster.yaml", True),
        ("other/a.yaml", False),
    ],
)
def test_host_files_are_spec_paths_for_hooks_and_watchers(path: str, holds: bool) -> None:
    assert is_spec_path(path) is holds


def test_working_tree_index_and_revision_each_read_hosts(repo: git.Repo) -> None:
    top = Path(repo.working_dir)
    repo.index.add(["ds/hosts/a.yaml"])
    repo.index.commit("host a")
    (top / "ds" / "hosts" / "a.yaml").write_text(HOST.replace("pack", "spread"))
    repo.index.add(["ds/hosts/a.yaml"])  # staged, not committed
    (top / "ds" / "hosts" / "b.yaml").write_text(HOST.replace("pack", "spread"))  # not staged
    assert hosts_of(load_revision(top / "ds", "HEAD")) == {"a.yaml": "pack"}
    assert hosts_of(load_staged(top / "ds")) == {"a.yaml": "spread"}
    assert hosts_of(load_directory(top / "ds")) == {"a.yaml": "spread", "b.yaml": "spread"}
    assert load_directory(top / "ds").models == []


def test_a_host_file_follows_the_rules_of_a_spec_file(repo: git.Repo, tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.yaml"
    outside.write_text(HOST)
    hosts = Path(repo.working_dir) / "ds" / "hosts"
    os.symlink(outside, hosts / "leak.yaml")
    (hosts / "huge.yaml").write_text("#" * (MAX_SPEC_BYTES + 1))
    raw = load_directory(Path(repo.working_dir) / "ds")
    assert hosts_of(raw) == {"a.yaml": "pack"}
    messages = {p.file.rsplit("/", 1)[-1]: p.message for p in raw.problems}
    assert "outside the repository" in messages["leak.yaml"]
    assert "a spec may hold at most" in messages["huge.yaml"]

"""The reconciler reads the operator's repository in the background (the loop's dirty check on
every pass, the API's revision): it must never hold the index lock that a `git commit` needs at
the same moment ("Another git process seems to be running in this repository")."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from reconciler.source import repo as git_repo


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_the_dirty_check_leaves_the_index_alone(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "op@example.com")
    git(tmp_path, "config", "user.name", "op")
    spec = tmp_path / "models" / "a.yaml"
    spec.parent.mkdir()
    spec.write_text("id: a\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "a")
    # the file's stat data changes but not its content: a plain `git status` would refresh the
    # index, taking index.lock and rewriting the index
    later = time.time() + 5
    os.utime(spec, (later, later))
    index = tmp_path / ".git" / "index"
    before = (index.read_bytes(), index.stat().st_mtime_ns)

    repo = git_repo.open_repo(tmp_path)
    assert repo is not None
    assert git_repo.uncommitted(repo, "models") == []

    assert (index.read_bytes(), index.stat().st_mtime_ns) == before
    subprocess.run(["git", "-C", str(tmp_path), "status", "-s"], check=True, capture_output=True)
    assert index.stat().st_mtime_ns != before[1]  # what a plain status does: the check can fail

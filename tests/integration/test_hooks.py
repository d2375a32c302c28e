"""The git hooks, installed by `reconciler hooks install` and run by real git commands.

pre-commit judges the staged content; pre-receive rejects an invalid push on a bare repository
with file:line shown to the pusher; post-merge and post-checkout ask a daemon to reconcile now
and never block git when none answers.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import git
import pytest

BIN = Path(sys.executable).parent
RECONCILER = BIN / "reconciler"
MODEL = (
    "id: {id}\nframework: vllm\nmodel_path: /models/{id}\npriority: 5\n"
    "resource_requirements: {{gpu_count: 1, gpu_memory_mb: 4000}}\nenabled: true\n"
)
# line 4: a misspelt field; the hooks must point at it
INVALID = "id: a\nframework: vllm\nmodel_path: /models/a\npriorty: 3\n"
WHERE = "desired-state/models/a.yaml:4"


def init_repo(path: Path, bare: bool = False) -> git.Repo:
    repo = git.Repo.init(path, bare=bare, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test Operator")
        config.set_value("user", "email", "ops@example.com")
    return repo


def git_env(**extra: str) -> dict[str, str]:
    """The environment hooks run in: the reconciler on PATH, no daemon unless one is named."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "NO_COLOR": "1"}
    env["RECONCILER_API"] = f"127.0.0.1:{closed_port()}"
    env.pop("RECONCILER", None)
    env.update(extra)
    return env


def run_git(
    repo: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        env=env or git_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def install(repo: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RECONCILER), "hooks", "install", str(repo), *options],
        capture_output=True,
        text=True,
        timeout=60,
        env=git_env(),
    )


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def closed_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A spec repository with one valid commit and the client hooks installed."""
    root = tmp_path / "specs"
    repo = init_repo(root)
    write(root, {"desired-state/models/a.yaml": MODEL.format(id="a")})
    repo.git.add("-A")
    repo.git.commit("-q", "-m", "Add a", "--no-verify")
    proc = install(root)
    assert proc.returncode == 0, proc.stderr
    return root


# ---- installer ------------------------------------------------------------------------------


def test_install_copies_executable_hooks(work: Path) -> None:
    hooks = work / ".git" / "hooks"
    source = Path(__file__).resolve().parents[2] / "hooks"
    for name in ("pre-commit", "post-merge", "post-checkout"):
        assert (hooks / name).read_bytes() == (source / name).read_bytes()
        assert (hooks / name).stat().st_mode & stat.S_IXUSR
    assert not (hooks / "pre-receive").exists()
    again = install(work)
    assert again.returncode == 0 and again.stdout.count("unchanged:") == 3


def test_install_refuses_to_overwrite_a_different_hook(work: Path) -> None:
    hook = work / ".git" / "hooks" / "post-merge"
    hook.write_text("#!/bin/sh\necho mine\n")
    (work / ".git" / "hooks" / "pre-commit").unlink()
    proc = install(work)
    assert proc.returncode == 1 and "--force" in proc.stderr and str(hook) in proc.stderr
    assert hook.read_text() == "#!/bin/sh\necho mine\n"
    assert not (work / ".git" / "hooks" / "pre-commit").exists()  # all or nothing
    forced = install(work, "--force")
    assert forced.returncode == 0 and f"replaced: {hook}" in forced.stdout
    assert "echo mine" not in hook.read_text()


def test_install_honours_core_hooks_path(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "r")
    with repo.config_writer() as config:
        config.set_value("core", "hooksPath", ".githooks")
    assert install(tmp_path / "r").returncode == 0
    assert (tmp_path / "r" / ".githooks" / "pre-commit").is_file()


def test_bare_repository_takes_the_server_hook(tmp_path: Path) -> None:
    bare = init_repo(tmp_path / "remote.git", bare=True)
    refused = install(tmp_path / "remote.git")
    assert refused.returncode == 1 and "--server" in refused.stderr
    proc = install(tmp_path / "remote.git", "--server")
    assert proc.returncode == 0, proc.stderr
    hook = Path(bare.git_dir) / "hooks" / "pre-receive"
    assert hook.stat().st_mode & stat.S_IXUSR


# ---- pre-commit -----------------------------------------------------------------------------


def test_pre_commit_rejects_an_invalid_staged_spec_with_file_and_line(work: Path) -> None:
    write(work, {"desired-state/models/a.yaml": INVALID})
    run_git(work, "add", "-A")
    proc = run_git(work, "commit", "-m", "Break a")
    assert proc.returncode != 0
    assert WHERE in proc.stdout + proc.stderr
    assert "priorty" in proc.stdout + proc.stderr
    assert git.Repo(work).head.commit.message.strip() == "Add a"


def test_pre_commit_accepts_a_valid_spec(work: Path) -> None:
    write(work, {"desired-state/models/b.yaml": MODEL.format(id="b")})
    run_git(work, "add", "-A")
    proc = run_git(work, "commit", "-m", "Add b")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert git.Repo(work).head.commit.message.strip() == "Add b"


def test_pre_commit_judges_what_is_staged_not_the_working_tree(work: Path) -> None:
    write(work, {"desired-state/models/b.yaml": MODEL.format(id="b")})
    run_git(work, "add", "desired-state/models/b.yaml")
    write(work, {"desired-state/models/a.yaml": INVALID})  # an unstaged, invalid edit
    proc = run_git(work, "commit", "-m", "Add b")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and the other way round: an invalid staged file is not rescued by a valid working copy
    run_git(work, "add", "desired-state/models/a.yaml")
    write(work, {"desired-state/models/a.yaml": MODEL.format(id="a")})
    rejected = run_git(work, "commit", "-m", "Break a")
    assert rejected.returncode != 0 and WHERE in rejected.stdout + rejected.stderr


def test_pre_commit_judges_what_commit_all_would_commit(work: Path) -> None:
    write(work, {"desired-state/models/a.yaml": INVALID})
    proc = run_git(work, "commit", "-a", "-m", "Break a")
    assert proc.returncode != 0 and WHERE in proc.stdout + proc.stderr


# ---- pre-receive ----------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> tuple[Path, Path]:
    """(bare remote with pre-receive, a clone of it holding one valid pushed commit)."""
    remote = tmp_path / "remote.git"
    init_repo(remote, bare=True)
    assert install(remote, "--server").returncode == 0
    clone = tmp_path / "clone"
    init_repo(clone)
    run_git(clone, "remote", "add", "origin", str(remote))
    write(clone, {"desired-state/models/a.yaml": MODEL.format(id="a")})
    run_git(clone, "add", "-A")
    run_git(clone, "commit", "-q", "-m", "Add a")
    pushed = run_git(clone, "push", "-u", "origin", "main", env=git_env(RECONCILER=str(RECONCILER)))
    assert pushed.returncode == 0, pushed.stderr
    return remote, clone


def commit_in(clone: Path, files: dict[str, str], message: str) -> None:
    write(clone, files)
    run_git(clone, "add", "-A")
    proc = run_git(clone, "commit", "-q", "-m", message)
    assert proc.returncode == 0, proc.stderr


def test_pre_receive_rejects_an_invalid_push_with_file_and_line(server) -> None:
    remote, clone = server
    before = git.Repo(remote).commit("main").hexsha
    commit_in(clone, {"desired-state/models/a.yaml": INVALID}, "Break a")
    proc = run_git(clone, "push", "origin", "main", env=git_env(RECONCILER=str(RECONCILER)))
    assert proc.returncode != 0
    assert f"remote: {WHERE}: error: priorty" in proc.stderr  # what the pusher sees
    assert "pre-receive hook declined" in proc.stderr
    assert git.Repo(remote).commit("main").hexsha == before


def test_pre_receive_accepts_a_valid_push(server) -> None:
    remote, clone = server
    commit_in(clone, {"desired-state/models/b.yaml": MODEL.format(id="b")}, "Add b")
    proc = run_git(clone, "push", "origin", "main", env=git_env(RECONCILER=str(RECONCILER)))
    assert proc.returncode == 0, proc.stderr
    assert "remote: desired-state at" in proc.stderr and "valid" in proc.stderr
    assert git.Repo(remote).commit("main").hexsha == git.Repo(clone).head.commit.hexsha


def test_pre_receive_through_gitpython_push(server) -> None:
    """The rejection also reaches a GitPython pusher, in the error's stderr."""
    _, clone = server
    commit_in(clone, {"desired-state/models/a.yaml": INVALID}, "Break a")
    repo = git.Repo(clone)
    with (
        repo.git.custom_environment(RECONCILER=str(RECONCILER)),
        pytest.raises(git.GitCommandError) as caught,
    ):
        repo.git.push("origin", "main")
    assert WHERE in caught.value.stderr


def test_pre_receive_rejects_removing_all_desired_state(server) -> None:
    _, clone = server
    run_git(clone, "rm", "-q", "-r", "desired-state")
    run_git(clone, "commit", "-q", "-m", "Remove everything")
    proc = run_git(clone, "push", "origin", "main", env=git_env(RECONCILER=str(RECONCILER)))
    assert proc.returncode != 0 and "removes desired-state entirely" in proc.stderr


def test_pre_receive_allows_branches_without_desired_state_and_deletions(server) -> None:
    _, clone = server
    run_git(clone, "checkout", "-q", "--orphan", "docs")
    run_git(clone, "rm", "-q", "-r", "--cached", "desired-state")
    write(clone, {"README.md": "docs\n"})
    run_git(clone, "add", "README.md")
    run_git(clone, "commit", "-q", "-m", "Docs branch")
    env = git_env(RECONCILER=str(RECONCILER))
    assert run_git(clone, "push", "origin", "docs", env=env).returncode == 0
    assert run_git(clone, "push", "origin", ":docs", env=env).returncode == 0


def test_pre_receive_fails_closed_without_a_reconciler(server) -> None:
    _, clone = server
    commit_in(clone, {"desired-state/models/b.yaml": MODEL.format(id="b")}, "Add b")
    git_bin = str(Path(shutil.which("git") or "/usr/bin/git").parent)
    env = git_env(PATH=f"{git_bin}{os.pathsep}/bin")  # git and sh, but no reconciler
    proc = run_git(clone, "push", "origin", "main", env=env)
    assert proc.returncode != 0
    assert "'reconciler' command was not found" in proc.stderr


# ---- post-merge / post-checkout -------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, str | None]] = []

    def do_POST(self) -> None:
        _Recorder.requests.append(("POST", self.path, self.headers.get("Authorization")))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def daemon() -> Iterator[tuple[str, list]]:
    """A stand-in for `reconciler run`'s API that records the requests it receives."""
    _Recorder.requests = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", _Recorder.requests
    finally:
        server.shutdown()
        server.server_close()


def branch_with_a_change(work: Path) -> None:
    run_git(work, "checkout", "-q", "-b", "feature")
    commit_in(work, {"desired-state/models/b.yaml": MODEL.format(id="b")}, "Add b")
    run_git(work, "checkout", "-q", "main")


def test_post_merge_without_a_daemon_notes_it_and_does_not_block(work: Path) -> None:
    branch_with_a_change(work)
    proc = run_git(work, "merge", "feature")
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    notes = [line for line in output.splitlines() if line.startswith("post-merge:")]
    assert len(notes) == 1 and "no reconciler daemon answered" in notes[0]
    assert (work / "desired-state" / "models" / "b.yaml").is_file()  # the merge happened


def test_post_merge_and_post_checkout_ask_the_daemon(work: Path, daemon) -> None:
    address, requests = daemon
    env = git_env(RECONCILER_API=address, RECONCILER_API_TOKEN="t0ken")
    run_git(work, "checkout", "-q", "-b", "feature", env=env)  # HEAD did not move: no request
    assert requests == []
    commit_in(work, {"desired-state/models/b.yaml": MODEL.format(id="b")}, "Add b")
    checkout = run_git(work, "checkout", "main", env=env)
    assert "post-checkout: asked the reconciler" in checkout.stdout + checkout.stderr
    merge = run_git(work, "merge", "feature", env=env)
    assert merge.returncode == 0
    assert "post-merge: asked the reconciler" in merge.stdout + merge.stderr
    assert requests == [("POST", "/api/v1/reconcile", "Bearer t0ken")] * 2


def test_post_merge_falls_back_to_python_without_curl(work: Path, daemon, tmp_path) -> None:
    address, requests = daemon
    tools = tmp_path / "tools"  # python3 but no curl
    tools.mkdir()
    (tools / "python3").symlink_to(sys.executable)
    hook = work / ".git" / "hooks" / "post-merge"
    env = {"PATH": str(tools), "RECONCILER_API": f"http://{address}/"}
    proc = subprocess.run(["/bin/sh", str(hook)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "asked the reconciler" in proc.stdout
    assert requests == [("POST", "/api/v1/reconcile", None)]

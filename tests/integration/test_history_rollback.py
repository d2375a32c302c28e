"""`reconciler history`, `rollback` and `diff` against real git repositories.

History marks each commit applied / invalid / superseded / pending from the state file and the
event log; rollback is a new commit whose desired-state tree equals the target's (history is
never rewritten); diff is spec-level.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import git
import pytest
from cli_support import run_cli

from reconciler.state.reading import read_state
from reconciler.state.statefile import State, write_state

MODEL = (
    "id: {id}\nframework: vllm\nmodel_path: /models/{id}\npriority: {priority}\n"
    "resource_requirements: {{gpu_count: 1, gpu_memory_mb: 4000}}\nenabled: {enabled}\n"
)
CLUSTER = "gpus:\n  - {index: 0, name: sim, memory_mb: 24000}\n"
# line 4 misspells priority: an invalid revision with a known file:line
INVALID = "id: b\nframework: vllm\nmodel_path: /models/b\npriorty: 3\n"


def model(model_id: str, priority: int = 5, enabled: bool = True) -> str:
    return MODEL.format(id=model_id, priority=priority, enabled=str(enabled).lower())


def init_repo(path: Path, bare: bool = False) -> git.Repo:
    repo = git.Repo.init(path, bare=bare, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test Operator")
        config.set_value("user", "email", "ops@example.com")
    return repo


def commit(repo: git.Repo, files: dict[str, str | None], message: str) -> str:
    for name, text in files.items():
        path = Path(repo.working_tree_dir) / name
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    repo.git.add("-A")
    repo.git.commit("-q", "-m", message)
    return repo.head.commit.hexsha


def reconciler(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


class Specs:
    """A spec repository with a known history (oldest first):

    add-a, add-b, prio-a (a 5 -> 8), break-b (invalid), readme (not in desired-state),
    fix-b (b priority 2, against the last valid prio-a), drop-a (removes a).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = init_repo(root)
        ds = "desired-state"
        self.add_a = commit(
            self.repo, {f"{ds}/cluster.yaml": CLUSTER, f"{ds}/models/a.yaml": model("a")}, "Add a"
        )
        self.add_b = commit(self.repo, {f"{ds}/models/b.yaml": model("b")}, "Add b")
        self.prio_a = commit(self.repo, {f"{ds}/models/a.yaml": model("a", 8)}, "Raise a")
        self.break_b = commit(self.repo, {f"{ds}/models/b.yaml": INVALID}, "Break b")
        self.readme = commit(self.repo, {"README.md": "specs\n"}, "Docs only")
        self.fix_b = commit(self.repo, {f"{ds}/models/b.yaml": model("b", 2)}, "Fix b")
        self.drop_a = commit(self.repo, {f"{ds}/models/a.yaml": None}, "Drop a")

    @property
    def desired(self) -> Path:
        return self.root / "desired-state"

    def log(self) -> list[str]:
        return [c.hexsha for c in self.repo.iter_commits("HEAD")]


@pytest.fixture
def specs(tmp_path: Path) -> Specs:
    return Specs(tmp_path / "specs")


def record_applied(state_dir: Path, current: str, events: list[str]) -> None:
    """What the controller writes: the state file's revision and 'applied' events."""
    write_state(state_dir / "state.yaml", State(revision=current))
    lines = [json.dumps({"time": 1.0, "kind": "applied", "revision": sha}) for sha in events]
    lines.insert(1, '{"kind": "ready", "model": "a"}')  # other events are ignored
    lines.append('{"kind": "applied", "revis')  # a torn last line from a crash
    (state_dir / "events.jsonl").write_text("\n".join(lines) + "\n")


# ---- history --------------------------------------------------------------------------------


def test_history_marks_applied_invalid_superseded_and_pending(specs: Specs, tmp_path) -> None:
    state_dir = tmp_path / "state"
    # the host applied add-b, then prio-a, and runs that still (break-b was invalid; fix-b and
    # drop-a have not been applied yet)
    record_applied(state_dir, specs.prio_a, [specs.add_b, specs.prio_a])
    proc = reconciler(
        "history",
        str(specs.desired),
        "--format",
        "json",
        "--state-dir",
        str(state_dir),
        cwd=specs.root,
    )
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    by_sha = {e["sha"]: e for e in entries}
    # newest first; the readme commit does not touch desired-state
    assert [e["sha"] for e in entries] == [
        specs.drop_a,
        specs.fix_b,
        specs.break_b,
        specs.prio_a,
        specs.add_b,
        specs.add_a,
    ]
    assert specs.readme not in by_sha
    status = {sha: by_sha[sha]["status"] for sha in by_sha}
    assert status == {
        specs.drop_a: "pending",
        specs.fix_b: "pending",
        specs.break_b: "invalid",
        specs.prio_a: "applied",
        specs.add_b: "applied",
        specs.add_a: "superseded",
    }
    assert [e["sha"] for e in entries if e["current"]] == [specs.prio_a]
    assert by_sha[specs.add_a]["summary"] == "added a"
    assert by_sha[specs.add_b]["summary"] == "added b"
    assert by_sha[specs.prio_a]["summary"] == "changed a (priority); priority a 5 -> 8"
    assert by_sha[specs.drop_a]["summary"] == "removed a"
    fix = by_sha[specs.fix_b]["summary"]  # measured against prio-a: break-b was never applied
    assert fix.startswith("changed b (priority); priority b 5 -> 2")
    assert specs.prio_a[:12] in fix
    broken = by_sha[specs.break_b]
    assert broken["problems"][0]["file"] == "desired-state/models/b.yaml"
    assert broken["problems"][0]["line"] == 4
    assert "desired-state/models/b.yaml:4" in broken["summary"]
    assert broken["author"] == "Test Operator <ops@example.com>"
    assert broken["subject"] == "Break b" and broken["time"]


def test_applied_commit_that_only_touched_other_files_counts_for_its_content(
    specs: Specs, tmp_path: Path
) -> None:
    """The state file records HEAD's sha; a docs-only commit maps to the spec commit before it."""
    docs = commit(specs.repo, {"README.md": "more docs\n"}, "More docs")
    state_dir = tmp_path / "state"
    record_applied(state_dir, docs, [specs.add_a])
    proc = reconciler(
        "history",
        str(specs.desired),
        "--format",
        "json",
        "--state-dir",
        str(state_dir),
        cwd=specs.root,
    )
    entries = json.loads(proc.stdout)
    assert entries[0]["sha"] == specs.drop_a
    assert (entries[0]["status"], entries[0]["current"]) == ("applied", True)
    assert [e["status"] for e in entries[1:]] == [
        "superseded",  # fix-b
        "invalid",  # break-b
        "superseded",  # prio-a
        "superseded",  # add-b
        "applied",  # add-a, from the event log
    ]


def test_history_text_and_limit(specs: Specs, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    record_applied(state_dir, specs.fix_b, [specs.fix_b])
    proc = reconciler(
        "history",
        str(specs.desired),
        "--limit",
        "3",
        "--state-dir",
        str(state_dir),
        cwd=specs.root,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 6  # two lines per commit
    assert lines[0].startswith(specs.drop_a[:12]) and "pending" in lines[0]
    assert "Drop a" in lines[0] and "Test Operator" in lines[0]
    assert lines[1].strip() == "removed a"
    assert lines[2].startswith(specs.fix_b[:12]) and "applied (current)" in lines[2]
    assert lines[4].startswith(specs.break_b[:12]) and "invalid" in lines[4]


def test_history_without_any_state_is_all_pending_or_invalid(specs: Specs, tmp_path) -> None:
    proc = reconciler(
        "history",
        str(specs.desired),
        "--format",
        "json",
        "--state-dir",
        str(tmp_path / "none"),
        cwd=specs.root,
    )
    assert {e["status"] for e in json.loads(proc.stdout)} == {"pending", "invalid"}


def test_history_outside_git_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    proc = reconciler("history", str(tmp_path / "ds"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "not inside a git repository" in proc.stderr


# ---- diff -----------------------------------------------------------------------------------


def test_diff_is_spec_level(specs: Specs) -> None:
    proc = reconciler("diff", specs.add_a, specs.prio_a, str(specs.desired), cwd=specs.root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["~ a (changed)", "    priority: 5 -> 8", "+ b (added)"]
    same = reconciler("diff", specs.prio_a, specs.readme, "desired-state", cwd=specs.root)
    assert same.returncode == 1  # readme's desired state is break-b's: invalid
    assert "desired-state/models/b.yaml:4" in same.stdout
    unchanged = reconciler("diff", specs.add_b, specs.add_b, "desired-state", cwd=specs.root)
    assert unchanged.stdout.strip() == "no spec changes"


def test_diff_of_an_unknown_revision_is_a_usage_error(specs: Specs) -> None:
    proc = reconciler("diff", "nope", "HEAD", "desired-state", cwd=specs.root)
    assert proc.returncode == 2 and "unknown revision" in proc.stderr


# ---- rollback -------------------------------------------------------------------------------


def tree_at(repo: git.Repo, rev: str) -> str:
    return (repo.commit(rev).tree / "desired-state").hexsha


def test_rollback_is_a_new_commit_with_the_old_tree(specs: Specs) -> None:
    before = specs.log()
    # something staged outside desired-state must stay staged, and out of the rollback commit
    (specs.root / "notes.txt").write_text("wip\n")
    specs.repo.git.add("notes.txt")
    proc = reconciler(
        "rollback",
        specs.prio_a,
        "desired-state",
        "--no-apply",
        "-m",
        "b breaks prod",
        cwd=specs.root,
    )
    assert proc.returncode == 0, proc.stderr
    after = specs.log()
    assert len(after) == len(before) + 1 and after[1:] == before  # nothing rewritten
    head = specs.repo.head.commit
    assert tree_at(specs.repo, "HEAD") == tree_at(specs.repo, specs.prio_a)
    assert head.parents[0].hexsha == specs.drop_a
    assert head.message.startswith(f"Roll back desired-state to {specs.prio_a[:12]}: Raise a")
    assert "b breaks prod" in head.message
    assert "notes.txt" not in [item.path for item in head.tree.traverse()]
    # index and working tree moved with HEAD; the staged file is still staged
    assert specs.repo.git.status("--porcelain").splitlines() == ["A  notes.txt"]
    assert (specs.desired / "models" / "a.yaml").read_text() == model("a", 8)
    assert (specs.desired / "models" / "b.yaml").read_text() == model("b")
    assert f"as at {specs.prio_a[:12]}" in proc.stdout
    # and history shows it on top, measured against drop-a
    history = reconciler("history", "desired-state", "--format", "json", cwd=specs.root)
    top = json.loads(history.stdout)[0]
    assert top["sha"] == head.hexsha
    assert top["summary"] == "added a; changed b (priority); priority b 2 -> 5"


def test_rollback_refuses_an_invalid_revision(specs: Specs) -> None:
    before = specs.log()
    proc = reconciler("rollback", specs.break_b, "desired-state", "--no-apply", cwd=specs.root)
    assert proc.returncode == 1
    assert "desired-state/models/b.yaml:4" in proc.stdout
    assert "invalid" in proc.stderr
    assert specs.log() == before


def test_rollback_refuses_uncommitted_changes_under_the_directory(specs: Specs) -> None:
    before = specs.log()
    (specs.desired / "models" / "b.yaml").write_text(model("b", 7))
    proc = reconciler("rollback", specs.add_b, "desired-state", "--no-apply", cwd=specs.root)
    assert proc.returncode == 1
    assert "uncommitted changes" in proc.stderr and "models/b.yaml" in proc.stderr
    assert specs.log() == before
    assert (specs.desired / "models" / "b.yaml").read_text() == model("b", 7)  # untouched


def test_rollback_to_the_current_content_does_nothing(specs: Specs) -> None:
    before = specs.log()
    proc = reconciler("rollback", "HEAD", "desired-state", "--no-apply", cwd=specs.root)
    assert proc.returncode == 0 and "nothing to do" in proc.stdout
    assert specs.log() == before
    unknown = reconciler("rollback", "nope", "desired-state", "--no-apply", cwd=specs.root)
    assert unknown.returncode == 2


def test_rollback_pushes_upstream(specs: Specs, tmp_path: Path) -> None:
    bare = init_repo(tmp_path / "remote.git", bare=True)
    specs.repo.create_remote("origin", bare.git_dir)
    specs.repo.git.push("-q", "-u", "origin", "main")
    proc = reconciler(
        "rollback", specs.add_b, "desired-state", "--no-apply", "--push", cwd=specs.root
    )
    assert proc.returncode == 0, proc.stderr
    assert "pushed to origin/main" in proc.stdout
    assert bare.commit("main").hexsha == specs.repo.head.commit.hexsha


def test_rollback_applies_at_once(specs: Specs, tmp_path: Path) -> None:
    """Applied through a real pass; the target disables every model, so no engine starts."""
    off = commit(
        specs.repo,
        {
            "desired-state/models/a.yaml": model("a", enabled=False),
            "desired-state/models/b.yaml": model("b", enabled=False),
        },
        "Everything off",
    )
    commit(specs.repo, {"desired-state/models/b.yaml": model("b", 2)}, "b on again")
    state_dir = tmp_path / "state"
    proc = reconciler(
        "rollback",
        off,
        "desired-state",
        "--state-dir",
        str(state_dir),
        "--timeout",
        "30",
        cwd=specs.root,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing to do: the host matches desired state" in proc.stdout
    state = read_state(state_dir / "state.yaml")
    head = specs.repo.head.commit.hexsha
    assert state is not None and state.revision == head  # applied at the rollback commit
    history = reconciler(
        "history",
        "desired-state",
        "--format",
        "json",
        "--state-dir",
        str(state_dir),
        cwd=specs.root,
    )
    top = json.loads(history.stdout)[0]
    assert (top["sha"], top["status"], top["current"]) == (head, "applied", True)

"""`reconciler validate` as an operator and a CI job run it: real processes, real git repositories.

Exit codes: 0 valid (warnings allowed), 1 invalid desired state, 2 usage errors (unknown option,
missing directory, unknown revision). No input ever ends in a Python traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import git
import pytest

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "reconciler"
COMMANDS = {
    "python -m reconciler": [sys.executable, "-m", "reconciler"],
    "console script": [str(CONSOLE_SCRIPT)],
}

GOOD = "id: {id}\nframework: llama_cpp\nmodel_path: /models/{id}.gguf\n"
# line 4: priority out of range; line 5: an unknown field with a close match
BAD = "id: a\nframework: llama_cpp\nmodel_path: /models/a.gguf\npriority: 11\nenabeld: false\n"
GITHUB_LINE = re.compile(
    r"^::(?P<kind>error|warning) file=(?P<file>[^,]+),line=(?P<line>\d+)"
    r"(?:,title=(?P<title>[^:]+))?::(?P<message>.+)$"
)


def run(
    *args: str, cwd: Path = REPO, command: str = "python -m reconciler"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run(
        [*COMMANDS[command], *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


@pytest.fixture
def invalid(tmp_path: Path) -> Path:
    """tmp_path/ds: one good model, one with two schema errors, one with a duplicate key."""
    write(
        tmp_path / "ds",
        {
            "models/a.yaml": BAD,
            "models/b.yaml": "id: b\nframework: vllm\nid: c\n",
            "models/good.yaml": GOOD.format(id="good"),
        },
    )
    return tmp_path


# ---- exit codes and text output -------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bundled_desired_state_is_valid(command: str) -> None:
    assert CONSOLE_SCRIPT.is_file()
    proc = run("validate", "desired-state", command=command)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        proc.stdout.strip()
        .splitlines()[-1]
        .startswith("desired-state: valid (3 model(s) read, 0 error(s)")
    )


def test_default_directory_is_desired_state() -> None:
    proc = run("validate")
    assert proc.returncode == 0
    assert "desired-state: valid" in proc.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_invalid_directory_exits_1_and_prints_file_and_line(invalid: Path, command: str) -> None:
    proc = run("validate", "ds", "--no-path-check", cwd=invalid, command=command)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines == [
        "ds/models/a.yaml:4: error: priority: 11 is greater than the maximum of 10",
        "ds/models/a.yaml:5: error: enabeld: unknown field 'enabeld' (did you mean 'enabled'?)",
        "ds/models/b.yaml:3: error: YAML error: duplicate key 'id' (first on line 1)",
        "ds: invalid (2 model(s) read, 3 error(s), 0 warning(s))",
    ]


def test_warnings_alone_exit_0(tmp_path: Path) -> None:
    write(tmp_path, {"ds/models/x.yaml": GOOD.format(id="a")})
    proc = run("validate", "ds", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [
        "ds/models/x.yaml:1: warning: id: id 'a' does not match the file name 'x'",
        "ds/models/x.yaml:3: warning: model_path: /models/a.gguf does not exist on this host",
        "ds: valid (1 model(s) read, 0 error(s), 2 warning(s))",
    ]


def test_no_path_check_skips_the_host_check(tmp_path: Path) -> None:
    write(tmp_path, {"ds/models/a.yaml": GOOD.format(id="a")})
    proc = run("validate", "ds", "--no-path-check", cwd=tmp_path)
    assert proc.returncode == 0
    assert "does not exist" not in proc.stdout
    assert "0 warning(s)" in proc.stdout


def test_brackets_in_file_names_are_printed_as_they_are(tmp_path: Path) -> None:
    write(tmp_path, {"ds/models/[draft]a.yaml": BAD})
    proc = run("validate", "ds", cwd=tmp_path)
    assert "ds/models/[draft]a.yaml:4: error" in proc.stdout


# ---- machine-readable formats -----------------------------------------------------------------


def test_json_format_of_an_invalid_state(invalid: Path) -> None:
    proc = run("validate", "ds", "--format", "json", "--no-path-check", cwd=invalid)
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {
        "valid": False,
        "problems": [
            {
                "file": "ds/models/a.yaml",
                "line": 4,
                "field": "priority",
                "message": "11 is greater than the maximum of 10",
                "severity": "error",
            },
            {
                "file": "ds/models/a.yaml",
                "line": 5,
                "field": "enabeld",
                "message": "unknown field 'enabeld' (did you mean 'enabled'?)",
                "severity": "error",
            },
            {
                "file": "ds/models/b.yaml",
                "line": 3,
                "field": "",
                "message": "YAML error: duplicate key 'id' (first on line 1)",
                "severity": "error",
            },
        ],
    }


def test_json_format_of_the_bundled_state() -> None:
    proc = run("validate", "--format", "json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"valid": True, "problems": []}


def test_json_format_keeps_warnings_and_stays_valid(tmp_path: Path) -> None:
    write(tmp_path, {"ds/models/x.yaml": GOOD.format(id="a")})
    proc = run("validate", "ds", "--format", "json", "--no-path-check", cwd=tmp_path)
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["valid"] is True
    assert [set(p) for p in doc["problems"]] == [{"file", "line", "field", "message", "severity"}]
    assert doc["problems"][0]["severity"] == "warning"


def test_github_format(invalid: Path) -> None:
    write(invalid, {"ds/models/w.yaml": GOOD.format(id="not-w")})
    proc = run("validate", "ds", "--format", "github", "--no-path-check", cwd=invalid)
    assert proc.returncode == 1
    parsed = [GITHUB_LINE.match(line) for line in proc.stdout.splitlines()]
    assert all(parsed), proc.stdout
    assert [
        (m["kind"], m["file"], int(m["line"]), m["message"]) for m in parsed if m is not None
    ] == [
        ("error", "ds/models/a.yaml", 4, "11 is greater than the maximum of 10"),
        ("error", "ds/models/a.yaml", 5, "unknown field 'enabeld' (did you mean 'enabled'?)"),
        ("error", "ds/models/b.yaml", 3, "YAML error: duplicate key 'id' (first on line 1)"),
        ("warning", "ds/models/w.yaml", 1, "id 'not-w' does not match the file name 'w'"),
    ]


def test_github_format_of_a_valid_state_prints_nothing() -> None:
    proc = run("validate", "--format", "github")
    assert (proc.returncode, proc.stdout) == (0, "")


# ---- usage errors and odd input ---------------------------------------------------------------


def test_unknown_option_exits_2() -> None:
    proc = run("validate", "--bogus")
    assert proc.returncode == 2
    assert "No such option" in proc.stderr
    assert "--bogus" in proc.stderr


def test_unknown_format_exits_2() -> None:
    proc = run("validate", "--format", "xml")
    assert proc.returncode == 2
    assert "xml" in proc.stderr


def test_missing_directory_exits_2(tmp_path: Path) -> None:
    proc = run("validate", "nope", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope: not a directory" in proc.stderr
    assert proc.stdout == ""


def test_no_desired_state_in_the_current_directory_exits_2(tmp_path: Path) -> None:
    proc = run("validate", cwd=tmp_path)
    assert proc.returncode == 2
    assert "desired-state: not a directory" in proc.stderr


def test_no_arguments_at_all_prints_usage() -> None:
    proc = run()
    assert proc.returncode in (0, 2)
    assert "Usage" in proc.stdout + proc.stderr
    assert "validate" in proc.stdout + proc.stderr


def test_an_empty_directory_is_valid_with_no_models(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    proc = run("validate", "ds", cwd=tmp_path)
    assert proc.returncode == 0
    assert "ds: valid (0 model(s) read" in proc.stdout


def test_unreadable_files_are_problems_not_crashes(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "ds/cluster.yaml": "42\n",
            "ds/models/empty.yaml": "",
            "ds/models/list.yaml": "- a\n- b\n",
            "ds/models/latin1.yaml": "id: latin1\nname: Caf\xe9\n".encode("latin-1"),
            "ds/models/deep.yaml": "id: deep\nparameters: " + "[" * 10000 + "]" * 10000 + "\n",
        },
    )
    proc = run("validate", "ds", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 1
    problems = json.loads(proc.stdout)["problems"]
    assert [(p["file"], p["line"]) for p in problems] == [
        ("ds/cluster.yaml", 1),
        ("ds/models/deep.yaml", 2),
        ("ds/models/empty.yaml", 1),
        ("ds/models/latin1.yaml", 1),
        ("ds/models/list.yaml", 1),
    ]
    assert problems[0]["message"] == "expected a mapping of fields, found a number"
    assert problems[3]["message"].startswith("not UTF-8 text")


# ---- --rev: desired state as committed ------------------------------------------------------

AUTHOR = git.Actor("Test", "test@example.com")


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    """A repository whose HEAD holds a valid state, and whose working tree is broken."""
    repo = git.Repo.init(tmp_path)
    write(tmp_path, {"ds/models/a.yaml": GOOD.format(id="a")})
    repo.index.add(["ds/models/a.yaml"])
    repo.index.commit("valid", author=AUTHOR, committer=AUTHOR)
    write(tmp_path, {"ds/models/a.yaml": BAD})
    return tmp_path


def test_rev_validates_the_committed_state_not_the_working_tree(repo_dir: Path) -> None:
    committed = run("validate", "ds", "--rev", "HEAD", "--no-path-check", cwd=repo_dir)
    assert committed.returncode == 0, committed.stdout
    assert "ds: valid (1 model(s) read" in committed.stdout
    working = run("validate", "ds", "--no-path-check", cwd=repo_dir)
    assert working.returncode == 1
    assert "ds/models/a.yaml:4: error: priority" in working.stdout


def test_rev_reports_problems_of_the_commit_with_their_lines(repo_dir: Path) -> None:
    repo = git.Repo(repo_dir)
    repo.index.add(["ds/models/a.yaml"])
    repo.index.commit("broken", author=AUTHOR, committer=AUTHOR)
    proc = run("validate", "ds", "--rev", "HEAD", "--format", "json", cwd=repo_dir)
    assert proc.returncode == 1
    problems = json.loads(proc.stdout)["problems"]
    assert [(p["file"], p["line"], p["field"]) for p in problems] == [
        ("ds/models/a.yaml", 4, "priority"),
        ("ds/models/a.yaml", 5, "enabeld"),
    ]
    # the previous commit is still valid
    assert run("validate", "ds", "--rev", "HEAD~1", cwd=repo_dir).returncode == 0


@pytest.mark.parametrize("rev", ["no-such-branch", "HEAD~3", "0" * 40])
def test_unknown_revision_exits_2(repo_dir: Path, rev: str) -> None:
    proc = run("validate", "ds", "--rev", rev, cwd=repo_dir)
    assert proc.returncode == 2
    assert f"{rev}: unknown revision" in proc.stderr


def test_directory_missing_at_the_revision_exits_2(repo_dir: Path) -> None:
    (repo_dir / "other").mkdir()
    proc = run("validate", "other", "--rev", "HEAD", cwd=repo_dir)
    assert proc.returncode == 2
    assert "other: not present at revision HEAD" in proc.stderr


def test_rev_outside_a_repository_exits_2(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    proc = run("validate", "ds", "--rev", "HEAD", cwd=tmp_path)
    assert proc.returncode == 2
    assert "not inside a git repository" in proc.stderr

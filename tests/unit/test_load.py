"""Loading desired-state: YAML failure modes with their line, directories, and git revisions.

Every unusable file must come back as one Problem that names the file, the line an operator has to
look at, and what is wrong; nothing may raise except a location that cannot be read (LoadError).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import git
import pytest

from reconciler.core.desired import Problem
from reconciler.source.load import (
    MAX_DEPTH,
    MAX_NODES,
    LoadError,
    load_directory,
    load_revision,
    load_staged,
    parse_document,
)

MODEL_A = """\
id: a
framework: llama_cpp
model_path: /models/a.gguf
"""


def yaml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problem_of(text: str, file: str = "models/m.yaml") -> Problem:
    doc, problem = parse_document(file, text)
    assert doc is None, f"expected a problem, parsed {doc}"
    assert problem is not None
    return problem


def data_of(text: str) -> dict:
    doc, problem = parse_document("models/m.yaml", text)
    assert problem is None, str(problem)
    assert doc is not None
    return doc.data


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def shown(path: Path) -> str:
    """How the loader names a working-tree file in problems: relative to the current directory."""
    return os.path.relpath(path)


# ---- YAML that cannot be a spec -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        # an unclosed flow sequence: the parser notices on the next key
        ("id: a\nframework: [vllm\nmodel_path: x\n", 3, "expected ',' or ']', but got ':'"),
        # a key indented under a scalar
        ("id: a\n  framework: vllm\n", 2, "mapping values are not allowed here"),
        # a tab used for indentation
        ("id: a\nparameters:\n\tctx-size: 1\n", 3, "found character '\\t' that cannot start"),
        # a list item where a key was expected
        ("id: a\n- framework\n", 2, "expected <block end>, but found '-'"),
        # an unknown escape in a double-quoted string
        ('id: a\nname: "bad \\q"\n', 2, "found unknown escape character 'q'"),
        # an unterminated quoted string at the end of the file
        ("id: a\nname: 'open\n", 3, "found unexpected end of stream"),
        # a character that cannot start a token
        ("id: a\nmodel_path: @models\n", 2, "found character '@' that cannot start any token"),
        # a control character YAML does not allow, located on its own line
        ("id: a\nname: x\x07y\n", 2, "unacceptable character #x0007"),
    ],
)
def test_yaml_syntax_error_names_file_line_and_cause(text: str, line: int, message: str) -> None:
    problem = problem_of(text)
    assert (problem.file, problem.line, problem.severity) == ("models/m.yaml", line, "error")
    assert problem.message.startswith("YAML error: ")
    assert message in problem.message


def test_duplicate_top_level_key_points_at_the_second_one() -> None:
    problem = problem_of(
        yaml("""
        id: a
        framework: vllm
        model_path: x
        id: b
    """)
    )
    assert problem == Problem(
        "models/m.yaml", 4, "", "YAML error: duplicate key 'id' (first on line 1)"
    )


def test_duplicate_nested_key_points_at_the_second_one() -> None:
    problem = problem_of(
        yaml("""
        id: a
        parameters:
          ctx-size: 2048
          threads: 2
          ctx-size: 4096
    """)
    )
    assert (problem.line, problem.message) == (
        5,
        "YAML error: duplicate key 'ctx-size' (first on line 3)",
    )


def test_duplicate_key_in_a_flow_mapping() -> None:
    problem = problem_of("id: a\nresource_requirements: {gpu_count: 1, gpu_count: 2}\n")
    assert (problem.line, problem.message) == (
        2,
        "YAML error: duplicate key 'gpu_count' (first on line 2)",
    )


def test_keys_that_differ_only_in_quoting_are_duplicates() -> None:
    problem = problem_of("id: a\n'id': b\n")
    assert (problem.line, problem.message) == (
        2,
        "YAML error: duplicate key 'id' (first on line 1)",
    )


@pytest.mark.parametrize(
    "text", ["", "\n\n", "   \n", "# just a comment\n# and another\n", "---\n", "~\n"]
)
def test_empty_file_is_reported_on_line_1(text: str) -> None:
    assert problem_of(text) == Problem(
        "models/m.yaml", 1, "", "file is empty: expected a mapping of fields"
    )


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("- id: a\n- id: b\n", "a list"),
        ("[a, b]\n", "a list"),
        ("just some words\n", "a string"),
        ("'quoted'\n", "a string"),
        ("42\n", "a number"),
        ("4.5\n", "a number"),
        ("true\n", "a boolean"),
    ],
)
def test_non_mapping_file_says_what_it_found(text: str, found: str) -> None:
    assert problem_of(text) == Problem(
        "models/m.yaml", 1, "", f"expected a mapping of fields, found {found}"
    )


def test_a_second_document_is_an_error_at_its_separator() -> None:
    problem = problem_of("id: a\n---\nid: b\n")
    assert problem.line == 2
    assert "second document" in problem.message


def test_undefined_alias_is_reported_where_it_is_used() -> None:
    problem = problem_of("id: a\nparameters: *common\n")
    assert (problem.line, problem.message) == (2, "YAML error: found undefined alias 'common'")


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("id: a\nname: !vault secret\n", "!vault"),
        ("id: a\nname: !!binary aGVsbG8=\n", "!!binary"),
        ("id: a\nenv: !!set {A, B}\n", "!!set"),
        ("id: a\nenv: !!python/object:os.system {}\n", "!!python/object:os.system"),
    ],
)
def test_unsupported_tags_are_rejected_not_constructed(text: str, tag: str) -> None:
    problem = problem_of(text)
    assert (problem.line, problem.message) == (2, f"YAML error: unsupported tag '{tag}'")


def test_explicit_tag_with_a_value_it_cannot_hold() -> None:
    problem = problem_of("id: a\npriority: !!int high\n")
    assert (problem.line, problem.message) == (2, "YAML error: 'high' is not a valid !!int")


def test_complex_key_is_rejected() -> None:
    problem = problem_of("id: a\n? [x, y]\n: 1\n")
    assert problem.line == 2
    assert "a key must be a plain value" in problem.message


def test_deep_nesting_is_a_problem_not_a_recursion_error() -> None:
    depth = 5000
    problem = problem_of("id: a\nparameters: " + "[" * depth + "]" * depth + "\n")
    assert (problem.line, problem.message) == (
        2,
        f"YAML error: nested more than {MAX_DEPTH} levels deep",
    )


def test_alias_bomb_is_stopped() -> None:
    lines = ["id: a", "l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    problem = problem_of("\n".join(lines) + "\n")
    assert f"more than {MAX_NODES} values" in problem.message
    assert 2 <= problem.line <= 10


def test_bom_is_accepted() -> None:
    assert data_of("\ufeffid: a\n") == {"id": "a"}


# ---- values and lines of a good document -------------------------------------------------------


def test_every_field_has_its_line() -> None:
    doc, problem = parse_document(
        "models/a.yaml",
        yaml("""
            # yaml-language-server: $schema=../../schemas/model.schema.json
            id: a
            parameters:
              ctx-size: 2048

              threads: 2
            gpu_devices:
              - 0
              - 1
            resource_requirements: {gpu_count: 2,
              gpu_memory_mb: 100}
        """),
    )
    assert problem is None and doc is not None
    assert doc.lines[("id",)] == 2
    assert doc.lines[("parameters",)] == 3
    assert doc.lines[("parameters", "ctx-size")] == 4
    assert doc.lines[("parameters", "threads")] == 6
    assert doc.lines[("gpu_devices", 0)] == 8
    assert doc.lines[("gpu_devices", 1)] == 9
    assert doc.lines[("resource_requirements", "gpu_count")] == 10
    assert doc.lines[("resource_requirements", "gpu_memory_mb")] == 11
    # a missing field points at the deepest parent that exists, and the root is line 1
    assert doc.line_of(("resource_requirements", "nope", "deeper")) == 10
    assert doc.line_of(("absent",)) == 1


def test_values_follow_yaml_1_2_core_schema() -> None:
    data = data_of(
        yaml("""
            a: yes
            b: on
            c: true
            d: False
            e: ~
            f: null
            g: 0o17
            h: 0x1F
            i: -12
            j: 1_000
            k: 1.5e3
            l: .inf
            m: 2024-01-01
            n: '8'
            o: 0777
            p: _
        """)
    )
    assert data == {
        "a": "yes",  # YAML 1.1 booleans are plain strings in 1.2: `enabled: yes` is a type error
        "b": "on",
        "c": True,
        "d": False,
        "e": None,
        "f": None,
        "g": 15,
        "h": 31,
        "i": -12,
        "j": 1000,
        "k": 1500.0,
        "l": float("inf"),
        "m": "2024-01-01",  # no timestamps: what a JSON Schema editor sees too
        "n": "8",
        "o": 777,
        "p": "_",
    }
    assert all(type(v) in (str, int, float, bool, type(None)) for v in data.values())


def test_keys_are_strings_as_written() -> None:
    doc, _ = parse_document("models/m.yaml", "id: a\n1: x\ntrue: y\nparameters: {2: 3}\n")
    assert doc is not None
    assert list(doc.data) == ["id", "1", "true", "parameters"]
    assert doc.data["parameters"] == {"2": 3}
    # the line map uses the same keys as the data, so errors about them find their line
    assert doc.line_of(("1",)) == 2
    assert doc.line_of(("parameters", "2")) == 4


def test_anchors_and_merge_keys() -> None:
    doc, problem = parse_document(
        "models/m.yaml",
        yaml("""
            defaults: &d {interval_s: 5, timeout_s: 2}
            health_check:
              <<: *d
              timeout_s: 3
            env: &e {A: "1"}
            other: *e
        """),
    )
    assert problem is None and doc is not None
    # explicit keys win over merged ones, whatever their order
    assert doc.data["health_check"] == {"interval_s": 5, "timeout_s": 3}
    assert doc.data["other"] == {"A": "1"}
    assert doc.line_of(("health_check", "interval_s")) == 3  # the `<<` line
    assert doc.line_of(("health_check", "timeout_s")) == 4


def test_merge_of_a_scalar_is_an_error() -> None:
    problem = problem_of("id: a\nenv:\n  <<: 5\n")
    assert problem.line == 3
    assert "'<<' merges a mapping" in problem.message


# ---- directories ----------------------------------------------------------------------------


def test_load_directory_reads_cluster_and_model_files_in_order(tmp_path: Path) -> None:
    root = write(
        tmp_path / "ds",
        {
            "cluster.yaml": "gpus: auto\n",
            "models/b.yaml": MODEL_A.replace("id: a", "id: b"),
            "models/a.yml": MODEL_A,
            "models/.hidden.yaml": "not: read\n",
            "models/notes.txt": "not: read\n",
            "models/README.md": "# not read\n",
        },
    )
    raw = load_directory(root)
    assert raw.problems == []
    assert raw.revision is None
    assert raw.cluster is not None and raw.cluster.data == {"gpus": "auto"}
    assert raw.cluster.file == shown(root / "cluster.yaml")
    assert [d.file for d in raw.models] == [
        shown(root / "models/a.yml"),
        shown(root / "models/b.yaml"),
    ]
    assert [d.data["id"] for d in raw.models] == ["a", "b"]


def test_load_directory_without_cluster_or_models(tmp_path: Path) -> None:
    raw = load_directory(tmp_path)
    assert (raw.cluster, raw.models, raw.problems) == (None, [], [])


def test_unreadable_files_become_problems_and_the_rest_still_loads(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "cluster.yaml": "- 1\n",
            "models/a.yaml": MODEL_A,
            "models/b.yaml": "id: b\nid: c\n",
            "models/latin1.yaml": "id: latin1\nname: Caf\xe9\n".encode("latin-1"),
            "models/empty.yaml": "",
        },
    )
    raw = load_directory(root)
    assert raw.cluster is None
    assert [d.data["id"] for d in raw.models] == ["a"]
    by_file = {p.file: p for p in raw.problems}
    assert set(by_file) == {
        shown(root / "cluster.yaml"),
        shown(root / "models/b.yaml"),
        shown(root / "models/latin1.yaml"),
        shown(root / "models/empty.yaml"),
    }
    assert by_file[shown(root / "cluster.yaml")].message == (
        "expected a mapping of fields, found a list"
    )
    assert by_file[shown(root / "models/b.yaml")].line == 2
    latin1 = by_file[shown(root / "models/latin1.yaml")]
    assert (latin1.line, latin1.severity) == (1, "error")
    assert latin1.message.startswith("not UTF-8 text")
    assert by_file[shown(root / "models/empty.yaml")].message.startswith("file is empty")


def test_a_directory_named_like_a_spec_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "models" / "odd.yaml").mkdir(parents=True)
    raw = load_directory(tmp_path)
    [problem] = raw.problems
    assert problem.file == shown(tmp_path / "models/odd.yaml")
    assert problem.message.startswith("cannot read")


def test_load_directory_of_a_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="not a directory"):
        load_directory(tmp_path / "nope")
    (tmp_path / "file.yaml").write_text(MODEL_A)
    with pytest.raises(LoadError, match="not a directory"):
        load_directory(tmp_path / "file.yaml")


# ---- git revisions --------------------------------------------------------------------------

AUTHOR = git.Actor("Test", "test@example.com")


def commit(repo: git.Repo, files: dict[str, str | bytes], message: str) -> str:
    top = Path(repo.working_tree_dir or "")
    write(top, files)
    repo.index.add(list(files))
    return repo.index.commit(message, author=AUTHOR, committer=AUTHOR).hexsha


@pytest.fixture
def repo(tmp_path: Path) -> git.Repo:
    return git.Repo.init(tmp_path / "repo")


@pytest.fixture
def history(repo: git.Repo) -> tuple[git.Repo, str, str]:
    """Two commits with different desired state, and a working tree that differs from both."""
    first = commit(
        repo,
        {
            "ds/cluster.yaml": "gpus: auto\n",
            "ds/models/a.yaml": MODEL_A,
        },
        "first",
    )
    second = commit(
        repo,
        {
            "ds/cluster.yaml": "gpus: [{index: 0, memory_mb: 1000}]\n",
            "ds/models/b.yaml": MODEL_A.replace("id: a", "id: b"),
        },
        "second",
    )
    top = Path(repo.working_tree_dir or "")
    (top / "ds/models/a.yaml").unlink()
    write(top, {"ds/models/c.yaml": MODEL_A.replace("id: a", "id: c"), "ds/cluster.yaml": "x: 1\n"})
    return repo, first, second


def test_load_revision_reads_each_commit_without_checkout(
    history: tuple[git.Repo, str, str],
) -> None:
    repo, first, second = history
    ds = Path(repo.working_tree_dir or "") / "ds"

    old = load_revision(ds, first)
    assert old.revision == first
    assert old.problems == []
    assert old.cluster is not None and old.cluster.data == {"gpus": "auto"}
    assert old.cluster.file == "ds/cluster.yaml"
    assert [(d.file, d.data["id"]) for d in old.models] == [("ds/models/a.yaml", "a")]

    new = load_revision(ds, second)
    assert new.revision == second
    assert new.cluster is not None
    assert new.cluster.data == {"gpus": [{"index": 0, "memory_mb": 1000}]}
    assert [d.data["id"] for d in new.models] == ["a", "b"]
    assert load_revision(ds, "HEAD").revision == second
    assert load_revision(ds, "HEAD~1").revision == first

    # nothing was checked out: the working tree still holds its own, uncommitted state
    assert repo.head.commit.hexsha == second
    assert not (ds / "models/a.yaml").exists()
    assert [d.data["id"] for d in load_directory(ds).models] == ["b", "c"]


def test_load_revision_reports_problems_with_their_lines(repo: git.Repo) -> None:
    rev = commit(
        repo,
        {
            "ds/models/a.yaml": "id: a\nframework: vllm\nid: b\n",
            "ds/models/b.yaml": "id: b\nname: Caf\xe9\n".encode("latin-1"),
        },
        "broken",
    )
    raw = load_revision(Path(repo.working_tree_dir or "") / "ds", rev)
    assert raw.models == []
    assert [(p.file, p.line) for p in raw.problems] == [
        ("ds/models/a.yaml", 3),
        ("ds/models/b.yaml", 1),
    ]
    assert "duplicate key 'id'" in raw.problems[0].message
    assert raw.problems[1].message.startswith("not UTF-8 text")


def test_load_revision_of_the_repository_root(repo: git.Repo) -> None:
    rev = commit(repo, {"cluster.yaml": "gpus: auto\n", "models/a.yaml": MODEL_A}, "root")
    raw = load_revision(repo.working_tree_dir or "", rev)
    assert [d.file for d in raw.models] == ["models/a.yaml"]
    assert raw.cluster is not None and raw.cluster.file == "cluster.yaml"


def test_a_directory_deleted_from_the_working_tree_is_read_at_its_revision(
    repo: git.Repo,
) -> None:
    rev = commit(repo, {"old/models/a.yaml": MODEL_A}, "old layout")
    ds = Path(repo.working_tree_dir or "") / "old"
    (ds / "models/a.yaml").unlink()
    (ds / "models").rmdir()
    ds.rmdir()
    assert [d.data["id"] for d in load_revision(ds, rev).models] == ["a"]


@pytest.mark.parametrize(
    "rev",
    ["no-such-branch", "HEAD~5", "0" * 40, "deadbeef", "", "HEAD..HEAD~1", "--all"],
)
def test_unknown_revision_raises_load_error(history: tuple[git.Repo, str, str], rev: str) -> None:
    repo, _, _ = history
    with pytest.raises(LoadError, match="unknown revision"):
        load_revision(Path(repo.working_tree_dir or "") / "ds", rev)


def test_directory_missing_at_the_revision_raises_load_error(
    history: tuple[git.Repo, str, str],
) -> None:
    repo, first, _ = history
    top = Path(repo.working_tree_dir or "")
    (top / "later").mkdir()
    with pytest.raises(LoadError, match="not present at revision"):
        load_revision(top / "later", first)
    with pytest.raises(LoadError, match="not present at revision"):
        load_revision(top / "never", first)


def test_a_file_instead_of_a_directory_raises_load_error(
    history: tuple[git.Repo, str, str],
) -> None:
    repo, first, _ = history
    with pytest.raises(LoadError, match="not a directory"):
        load_revision(Path(repo.working_tree_dir or "") / "ds/cluster.yaml", first)


def test_outside_a_repository_raises_load_error(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(LoadError, match="not inside a git repository"):
        load_revision(tmp_path / "plain", "HEAD")


# ---- files nobody should have to read: devices, FIFOs, links out, huge specs -------------------


def only_problem(raw_problems: list[Problem], path: Path) -> Problem:
    [problem] = raw_problems
    assert (problem.file, problem.line, problem.severity) == (shown(path), 1, "error")
    return problem


def load_within(root: Path, seconds: float = 10.0):
    """load_directory on a thread: a read that blocks shows as a timeout, not a hung suite."""
    result: list = []
    worker = threading.Thread(target=lambda: result.append(load_directory(root)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"load_directory blocked for more than {seconds} s"
    return result[0]


def test_a_symlink_to_dev_zero_is_refused_without_reading_it(tmp_path: Path) -> None:
    root = write(tmp_path / "repo", {"models/a.yaml": MODEL_A})
    (root / "models/zero.yaml").symlink_to("/dev/zero")
    raw = load_within(root)
    assert [d.data["id"] for d in raw.models] == ["a"]
    problem = only_problem(raw.problems, root / "models/zero.yaml")
    assert "outside the repository" in problem.message


def test_a_fifo_named_like_a_spec_does_not_block(tmp_path: Path) -> None:
    root = write(tmp_path, {"models/a.yaml": MODEL_A})
    os.mkfifo(root / "models/x.yaml")
    os.mkfifo(root / "cluster.yaml")
    raw = load_within(root)
    assert [d.data["id"] for d in raw.models] == ["a"]
    messages = {p.file: p.message for p in raw.problems}
    assert "a FIFO, not a regular file" in messages[shown(root / "models/x.yaml")]
    assert "a FIFO, not a regular file" in messages[shown(root / "cluster.yaml")]


def test_validate_command_returns_promptly_on_a_fifo(tmp_path: Path) -> None:
    root = write(tmp_path, {"models/a.yaml": MODEL_A})
    os.mkfifo(root / "models/x.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", str(root), "--no-path-check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "models/x.yaml:1" in proc.stdout + proc.stderr
    assert "FIFO" in proc.stdout + proc.stderr


def test_a_spec_over_one_mib_is_refused(tmp_path: Path) -> None:
    big = MODEL_A + "# " + "x" * (2 << 20) + "\n"
    root = write(tmp_path, {"models/a.yaml": MODEL_A, "models/big.yaml": big})
    raw = load_directory(root)
    problem = only_problem(raw.problems, root / "models/big.yaml")
    assert "at most 1048576 bytes (1 MiB)" in problem.message
    assert [d.data["id"] for d in raw.models] == ["a"]


def test_a_symlink_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere" / "secret.yaml"
    write(secret.parent, {"secret.yaml": MODEL_A})
    root = tmp_path / "repo" / "ds"
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (root / "models").mkdir(parents=True)
    (root / "models/s.yaml").symlink_to(secret)
    problem = only_problem(load_directory(root).problems, root / "models/s.yaml")
    assert "outside the repository" in problem.message and str(secret) in problem.message


def test_a_symlink_to_a_file_inside_the_repository_is_read(tmp_path: Path) -> None:
    root = write(tmp_path / "repo", {"shared/a.yaml": MODEL_A})
    (tmp_path / "repo" / ".git").mkdir()
    (root / "ds" / "models").mkdir(parents=True)
    (root / "ds" / "models/a.yaml").symlink_to("../../shared/a.yaml")
    raw = load_directory(root / "ds")
    assert raw.problems == [] and [d.data["id"] for d in raw.models] == ["a"]


def test_revisions_and_the_index_follow_the_same_rules(repo: git.Repo) -> None:
    top = Path(repo.working_tree_dir or "")
    big = MODEL_A + "# " + "x" * (2 << 20) + "\n"
    (top / "ds" / "models").mkdir(parents=True)
    (top / "shared.yaml").write_text(MODEL_A.replace("id: a", "id: linked"))
    (top / "ds/models/in.yaml").symlink_to("../../shared.yaml")
    (top / "ds/models/out.yaml").symlink_to("/etc/passwd")
    (top / "ds/models/up.yaml").symlink_to("../../../outside.yaml")
    write(top, {"ds/models/big.yaml": big})
    repo.index.add(["shared.yaml", "ds/models/in.yaml", "ds/models/out.yaml", "ds/models/up.yaml"])
    repo.index.add(["ds/models/big.yaml"])
    for raw in (load_staged(top / "ds"), load_revision(top / "ds", commit(repo, {}, "links"))):
        assert [d.data["id"] for d in raw.models] == ["linked"]
        messages = {p.file: p.message for p in raw.problems}
        assert "at most 1048576 bytes" in messages["ds/models/big.yaml"]
        assert "not a file inside the repository" in messages["ds/models/out.yaml"]
        assert "not a file inside the repository" in messages["ds/models/up.yaml"]
        assert all(p.line == 1 for p in raw.problems)

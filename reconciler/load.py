"""Read desired-state/ from the working tree or from a git revision, keeping every field's line.

The result is raw documents (plain Python values plus a map from field path to line) and the
problems that made a file unreadable (YAML syntax, duplicate keys, empty or non-mapping files).
Turning documents into specs is `validate`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from reconciler.problems import Problem

FieldPath = tuple[str | int, ...]

CLUSTER_FILE = "cluster.yaml"
MODELS_DIR = "models"


@dataclass(frozen=True)
class SourceDoc:
    """One YAML document: its display path, its plain data, and the line of every field."""

    file: str
    data: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)

    def line_of(self, path: Iterable[str | int]) -> int:
        """Line of the deepest known prefix of `path` (a missing field points at its parent)."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get((), 1)


@dataclass(frozen=True)
class RawDesiredState:
    root: str
    revision: str | None
    cluster: SourceDoc | None
    models: list[SourceDoc]
    problems: list[Problem]


class LoadError(Exception):
    """The desired-state location itself cannot be read (not a directory, unknown revision)."""


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def parse_document(file: str, text: str) -> tuple[SourceDoc | None, Problem | None]:
    """Parse one YAML text; return the document, or the problem that makes it unusable."""
    try:
        node = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = exc.problem or str(exc).splitlines()[0]
        if "duplicate key" in str(exc):
            message = _duplicate_key_message(exc)
        return None, Problem(file, line, "", f"YAML error: {message}")
    except (YAMLError, ValueError, UnicodeError) as exc:
        return None, Problem(file, 1, "", f"YAML error: {str(exc).splitlines()[0]}")
    if node is None:
        return None, Problem(file, 1, "", "file is empty: expected a mapping of fields")
    if not isinstance(node, CommentedMap):
        kind = type(node).__name__ if not isinstance(node, CommentedSeq) else "list"
        return None, Problem(file, 1, "", f"expected a mapping of fields, found a {kind}")
    lines: dict[FieldPath, int] = {(): 1}
    data = _plain(node, (), lines)
    return SourceDoc(file, data, lines), None


def _duplicate_key_message(exc: MarkedYAMLError) -> str:
    return (exc.problem or "duplicate key").strip()


def _plain(node: Any, path: FieldPath, lines: dict[FieldPath, int]) -> Any:
    """Convert ruamel's round-trip nodes to plain values, recording each field's line."""
    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            child = (*path, str(key))
            lines[child] = node.lc.key(key)[0] + 1
            out[str(key) if not isinstance(key, str | int | float | bool) else key] = _plain(
                value, child, lines
            )
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for i, value in enumerate(node):
            child = (*path, i)
            lines[child] = node.lc.item(i)[0] + 1
            out_list.append(_plain(value, child, lines))
        return out_list
    return _scalar(node)


def _scalar(value: Any) -> Any:
    # ruamel wraps scalars in str/int/float subclasses that carry formatting; unwrap them so that
    # JSON Schema type checks and hashing see ordinary values.
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


def load_directory(root: str | os.PathLike[str]) -> RawDesiredState:
    """Read desired-state from a directory of the working tree."""
    base = Path(root)
    if not base.is_dir():
        raise LoadError(f"{root}: not a directory")
    files = []
    cluster = base / CLUSTER_FILE
    if cluster.is_file():
        files.append(cluster)
    models_dir = base / MODELS_DIR
    if models_dir.is_dir():
        files.extend(sorted(p for p in models_dir.iterdir() if _is_spec_name(p.name)))
    triples = ((p == cluster, _display(p), _read_text(p)) for p in files)
    return _assemble(str(root), None, triples)


def load_revision(root: str | os.PathLike[str], rev: str) -> RawDesiredState:
    """Read desired-state as committed at `rev`, straight from the commit's tree (no checkout)."""
    import git  # GitPython; imported here so the working-tree path needs no git at all

    try:
        repo = git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise LoadError(f"{root}: not inside a git repository") from exc
    try:
        commit = repo.commit(rev)
    except (git.BadName, ValueError) as exc:
        raise LoadError(f"{rev}: unknown revision") from exc
    top = Path(repo.working_tree_dir or root).resolve()
    rel = Path(root).resolve().relative_to(top).as_posix()
    try:
        tree = commit.tree / rel if rel != "." else commit.tree
    except KeyError as exc:
        raise LoadError(f"{rel}: not present at revision {rev}") from exc
    return _assemble(str(root), commit.hexsha, _tree_files(tree, rel))


def _tree_files(tree: Any, rel: str) -> Iterator[tuple[bool, str, str | Problem]]:
    prefix = "" if rel == "." else rel + "/"
    names = {item.name: item for item in tree}
    if CLUSTER_FILE in names and names[CLUSTER_FILE].type == "blob":
        yield True, prefix + CLUSTER_FILE, _decode(prefix + CLUSTER_FILE, names[CLUSTER_FILE])
    models = names.get(MODELS_DIR)
    if models is not None and models.type == "tree":
        for blob in sorted(models, key=lambda b: b.name):
            if blob.type == "blob" and _is_spec_name(blob.name):
                path = f"{prefix}{MODELS_DIR}/{blob.name}"
                yield False, path, _decode(path, blob)


def _decode(path: str, blob: Any) -> str | Problem:
    try:
        return blob.data_stream.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem(path, 1, "", f"not UTF-8 text: {exc.reason}")


def _read_text(path: Path) -> str | Problem:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return Problem(_display(path), 1, "", f"not UTF-8 text: {exc.reason}")
    except OSError as exc:
        return Problem(_display(path), 1, "", f"cannot read: {exc.strerror}")


def _assemble(
    root: str, revision: str | None, files: Iterable[tuple[bool, str, str | Problem]]
) -> RawDesiredState:
    """Parse (is_cluster, display path, text) triples into one raw desired state."""
    cluster = None
    models = []
    problems = []
    for is_cluster, path, text in files:
        if isinstance(text, Problem):
            problems.append(text)
            continue
        doc, problem = parse_document(path, text)
        if problem is not None:
            problems.append(problem)
        elif is_cluster:
            cluster = doc
        else:
            models.append(doc)
    return RawDesiredState(root, revision, cluster, models, problems)


def _is_spec_name(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and not name.startswith(".")


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)

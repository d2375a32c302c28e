"""Read desired-state/ from the working tree or from a git revision, keeping every field's line.

The result is raw documents (plain Python values plus a map from field path to line) and the
problems that made a file unreadable (YAML syntax, duplicate keys, empty or non-mapping files).
Turning documents into specs is `validate`'s job.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.resolver import Resolver

from reconciler.core.desired import FieldPath, RawDesiredState, SourceDoc
from reconciler.core.problems import Problem

CLUSTER_FILE = "cluster.yaml"
MODELS_DIR = "models"


class LoadError(Exception):
    """The desired-state location itself cannot be read (not a directory, unknown revision)."""


# Specs are a few levels deep; a limit keeps hostile input (deep nesting, alias bombs) from
# exhausting the stack or the memory of everything that reads the data afterwards.
MAX_DEPTH = 32
MAX_NODES = 100_000

_CORE = "tag:yaml.org,2002:"
_RESOLVER = Resolver()  # YAML 1.2 core: what editors (yaml-language-server) also assume


class _Unusable(Exception):
    """A document that parses as YAML but cannot be a spec (or hits a limit)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _yaml() -> YAML:
    # Only the event parser (no comment handling, no composer): markedly faster than round-trip
    # loading, and iterative, so deep nesting cannot overflow the stack. _build makes the values.
    return YAML(typ="safe", pure=True)


def parse_document(file: str, text: str) -> tuple[SourceDoc | None, Problem | None]:
    """Parse one YAML text; return the document, or the problem that makes it unusable."""
    try:
        data, lines = _build(_yaml().parse(text))
    except _Unusable as exc:
        return None, Problem(file, exc.line, "", f"YAML error: {exc.message}")
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = exc.problem or str(exc).splitlines()[0]
        return None, Problem(file, line, "", f"YAML error: {message}")
    except ReaderError as exc:  # a character YAML does not allow: locate it
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        return None, Problem(file, line, "", f"YAML error: {str(exc).splitlines()[0]}")
    except (YAMLError, ValueError, UnicodeError) as exc:
        return None, Problem(file, 1, "", f"YAML error: {str(exc).splitlines()[0]}")
    if data is None:
        return None, Problem(file, 1, "", "file is empty: expected a mapping of fields")
    if not isinstance(data, dict):
        return None, Problem(file, 1, "", f"expected a mapping of fields, found {_kind(data)}")
    return SourceDoc(file, data, lines), None


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


@dataclass
class _Frame:
    path: FieldPath
    value: dict[str, Any] | list[Any]
    anchor: str | None
    line: int
    size: int = 1
    key: str | None = None  # a mapping's key waiting for its value
    key_line: int = 0
    key_is_merge: bool = False
    merges: list[tuple[Any, int]] = field(default_factory=list)


def _build(events: Iterable[Any]) -> tuple[Any, dict[FieldPath, int]]:
    """Plain values (dict, list, str, int, float, bool, None) and the line of every field.

    Keys are always strings, spelled as written (`1:` is the key "1"). Aliases share the
    anchored value; `<<` merge keys are honoured, explicit keys win over merged ones.
    """
    lines: dict[FieldPath, int] = {(): 1}
    stack: list[_Frame] = []
    anchors: dict[str, tuple[Any, int, str | None]] = {}  # value, node count, scalar text
    root: Any = None
    documents = 0
    nodes = 0

    def attach(value: Any, size: int, line: int, text: str | None, merge: bool) -> None:
        nonlocal root, nodes
        nodes += size
        if nodes > MAX_NODES:
            raise _Unusable(line, f"more than {MAX_NODES} values (after expanding aliases)")
        if not stack:
            root = value
            return
        top = stack[-1]
        top.size += size
        if isinstance(top.value, list):
            lines[(*top.path, len(top.value))] = line
            top.value.append(value)
        elif top.key is None:
            if text is None:
                raise _Unusable(line, "a key must be a plain value, not a list or a mapping")
            if text in top.value and not merge:
                first = lines[(*top.path, text)]
                raise _Unusable(line, f"duplicate key '{text}' (first on line {first})")
            top.key, top.key_line, top.key_is_merge = text, line, merge
            if not merge:
                lines[(*top.path, text)] = line
        else:
            if top.key_is_merge:
                top.merges.append((value, top.key_line))
            else:
                top.value[top.key] = value
            top.key = None

    def child_path() -> FieldPath:
        if not stack:
            return ()
        top = stack[-1]
        if isinstance(top.value, list):
            return (*top.path, len(top.value))
        if top.key is None:
            return (*top.path, "?")  # a complex key: rejected when it ends
        return (*top.path, top.key)

    for event in events:
        kind = type(event)
        line = event.start_mark.line + 1
        if kind is ScalarEvent:
            value, merge = _scalar(event, line)
            if event.anchor:
                anchors[event.anchor] = (value, 1, event.value)
            attach(value, 1, line, event.value, merge)
        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            if len(stack) >= MAX_DEPTH:
                raise _Unusable(line, f"nested more than {MAX_DEPTH} levels deep")
            expected = "map" if kind is MappingStartEvent else "seq"
            if event.tag not in (None, "!", _CORE + expected):
                raise _Unusable(line, f"unsupported tag '{_short(event.tag)}'")
            container: dict[str, Any] | list[Any] = {} if kind is MappingStartEvent else []
            stack.append(_Frame(child_path(), container, event.anchor, line))
        elif kind is MappingEndEvent or kind is SequenceEndEvent:
            frame = stack.pop()
            if isinstance(frame.value, dict):
                _merge(frame, lines)
            if frame.anchor:
                anchors[frame.anchor] = (frame.value, frame.size, None)
            attach(frame.value, frame.size, frame.line, None, False)
        elif kind is AliasEvent:
            if event.anchor not in anchors:
                raise _Unusable(line, f"found undefined alias '{event.anchor}'")
            value, size, text = anchors[event.anchor]
            attach(value, size, line, text, False)
        elif kind is DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise _Unusable(line, "a second document (---): a spec file holds one document")
    return root, lines


def _merge(frame: _Frame, lines: dict[FieldPath, int]) -> None:
    mapping = frame.value
    assert isinstance(mapping, dict)
    for source, line in frame.merges:
        sources = source if isinstance(source, list) else [source]
        for item in sources:
            if not isinstance(item, dict):
                raise _Unusable(line, "'<<' merges a mapping or a list of mappings")
            for key, value in item.items():
                if key not in mapping:
                    mapping[key] = value
                    lines[(*frame.path, key)] = line


_BOOLS = {"true": True, "false": False}


def _scalar(event: ScalarEvent, line: int) -> tuple[Any, bool]:
    """The value of a scalar (YAML 1.2 core schema) and whether it is a `<<` merge key."""
    text: str = event.value
    tag = event.tag
    if tag is None:
        if not event.implicit[0]:  # quoted
            return text, False
        tag = str(_RESOLVER.resolve(ScalarNode, text, (True, False)))
        with contextlib.suppress(ValueError, KeyError, _Unusable):
            return _scalar_as(tag, text, line)
        return text, False  # looked like a number but is not one (`_`, `0x_`): text
    if tag == "!":
        return text, False
    return _scalar_as(tag, text, line)


def _scalar_as(tag: str, text: str, line: int) -> tuple[Any, bool]:
    try:
        if tag == _CORE + "str" or tag == _CORE + "timestamp":  # dates stay text, as in JSON
            return text, False
        if tag == _CORE + "int":
            return _int(text), False
        if tag == _CORE + "float":
            return _float(text), False
        if tag == _CORE + "bool":
            return _BOOLS[text.lower()], False
        if tag == _CORE + "null":
            if text not in ("", "~", "null", "Null", "NULL"):
                raise ValueError(text)
            return None, False
        if tag == _CORE + "merge":
            return text, True
    except (ValueError, KeyError) as exc:
        raise _Unusable(line, f"'{text}' is not a valid {_short(tag)}") from exc
    raise _Unusable(line, f"unsupported tag '{_short(tag)}'")


def _int(text: str) -> int:
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    for prefix, base in (("0b", 2), ("0o", 8), ("0x", 16)):
        if digits.startswith(prefix):
            return sign * int(digits[2:], base)
    return sign * int(digits)


def _float(text: str) -> float:
    digits = text.replace("_", "").lower()
    if digits.lstrip("+-") in (".inf", ".nan"):
        digits = digits.replace(".", "")
    return float(digits)


def _short(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


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


def _repo_of(root: str | os.PathLike[str]) -> Any:
    import git  # GitPython; imported here so the working-tree path needs no git at all

    start = Path(root)
    while not start.exists() and start != start.parent:
        start = start.parent  # a directory deleted from the working tree may exist at `rev`
    try:
        return git.Repo(start, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise LoadError(f"{root}: not inside a git repository") from exc


def _relative(repo: Any, root: str | os.PathLike[str]) -> str:
    top = Path(repo.working_tree_dir or root).resolve()
    try:
        return Path(root).resolve().relative_to(top).as_posix()
    except ValueError as exc:
        raise LoadError(f"{root}: not inside the working tree {top}") from exc


def load_staged(root: str | os.PathLike[str]) -> RawDesiredState:
    """Read desired-state as it would be committed: the blobs in git's index (pre-commit)."""
    import git

    repo = _repo_of(root)
    rel = _relative(repo, root)
    prefix = "" if rel == "." else rel + "/"
    # `git commit -a` and `git commit PATH` stage into a temporary index that git names in
    # GIT_INDEX_FILE for the hooks; that index, not .git/index, is what will be committed.
    index_file = os.environ.get("GIT_INDEX_FILE")
    index = git.IndexFile(repo, os.path.abspath(index_file)) if index_file else repo.index
    staged = sorted(
        (path, entry)
        for (path, stage), entry in index.entries.items()
        if stage == 0 and path.startswith(prefix)
    )

    def files() -> Iterator[tuple[bool, str, str | Problem]]:
        for path, entry in staged:
            inner = path[len(prefix) :]
            is_cluster = inner == CLUSTER_FILE
            in_models = inner.startswith(MODELS_DIR + "/") and inner.count("/") == 1
            if is_cluster or (in_models and _is_spec_name(inner.rsplit("/", 1)[-1])):
                data = repo.odb.stream(entry.binsha).read()
                try:
                    yield is_cluster, path, data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield is_cluster, path, Problem(path, 1, "", f"not UTF-8 text: {exc.reason}")

    return _assemble(str(root), None, files())


def load_revision(root: str | os.PathLike[str], rev: str) -> RawDesiredState:
    """Read desired-state as committed at `rev`, straight from the commit's tree (no checkout)."""
    import git

    repo = _repo_of(root)
    try:
        commit = repo.commit(rev)
        root_tree = commit.tree  # reading the tree is what proves that the commit exists
    except (git.BadName, git.BadObject, ValueError) as exc:
        raise LoadError(f"{rev}: unknown revision") from exc
    rel = _relative(repo, root)
    try:
        tree = root_tree / rel if rel != "." else root_tree
    except KeyError as exc:
        raise LoadError(f"{rel}: not present at revision {rev}") from exc
    if tree.type != "tree":
        raise LoadError(f"{rel}: not a directory at revision {rev}")
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

"""Reading the state file and observed-state files: one parser, errors in an operator's words.

Both kinds of file are checked against the one shape (reconciler.state.statefile) and turned
into records by the same steps (`_records`). A problem reads like
`file:line: models.qwen2-7b.memory_mb: expected a whole number, found 'lots'`, with the line
taken from the YAML that was read.

A corrupt state file is moved aside, never deleted, and the reconciler rebuilds its state from
observation (engines carry their own identity, so nothing is lost but counters and the last
error).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from reconciler.core.instance import InstanceRecord, planner_view
from reconciler.state.statefile import (
    END_MARKER,
    STATE_VERSION,
    ObservedModelRecord,
    ObservedRecord,
    State,
    StateRecord,
    kind,
    record_of,
)

try:  # PyYAML built with libyaml: the fast path; without it ruamel reads everything
    import yaml as _pyyaml
    from yaml import CSafeLoader as _CSafeLoader
except ImportError:  # pragma: no cover - PyYAML without its C extension
    _pyyaml = None  # type: ignore[assignment]
    _CSafeLoader = None  # type: ignore[assignment,misc]


class CorruptState(Exception):
    """The state file exists but is not a complete version-1 state; the message says why."""


class ShapeError(Exception):
    """A file that is not the expected shape; the message names file, line and field."""


class ObservedFileError(Exception):
    """An observed-state file cannot be used; the message names the file, line and field."""


# ---- the state file -------------------------------------------------------------------------


def read_state(path: str | os.PathLike[str]) -> State | None:
    """The state file, or None when there is none. Raises CorruptState for a bad file.

    I/O errors other than a missing file (permissions...) are raised as they are: the file
    may be fine, so it must not be treated as corrupt.
    """
    target = Path(path)
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"{target} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise CorruptState(message) from None
    if text.rstrip().splitlines()[-1:] != [END_MARKER]:
        raise CorruptState(f"{target} has no end marker: cut short by a torn write or a copy")
    fast = _read_with_libyaml(text, str(target))
    if fast is not None:
        return fast
    try:
        return state_from_document(load_yaml(text, str(target)), str(target))
    except ShapeError as exc:
        raise CorruptState(str(exc)) from None


def _read_with_libyaml(text: str, source: str) -> State | None:
    """The state read by libyaml (PyYAML's C parser: ~15x faster than ruamel's round-trip
    loader on a host of hundreds of models); None when it is not installed or the text is not
    a good state for it. A state file is ours, and a value that YAML 1.1 (libyaml) reads
    differently from 1.2 (ruamel) turns out a wrong type, which the strict shape check
    refuses: then ruamel reads it again, and a bad file is reported with its lines."""
    if _CSafeLoader is None:
        return None
    try:
        return state_from_document(_pyyaml.load(text, Loader=_CSafeLoader), source)
    except Exception:  # ruamel's reading decides, and words the problem
        return None


def read_state_or_recover(path: str | os.PathLike[str]) -> tuple[State | None, str | None]:
    """(state, None); (None, None) without a file; (None, why) after moving a bad file aside.

    The corrupt file is kept as <path>.corrupt-<timestamp> for a post-mortem, and temp files
    left by a writer that died mid-write are removed, so call this at start-up, before this
    process writes. The caller rebuilds from observation.
    """
    target = Path(path)
    _remove_stale_temp_files(target)
    try:
        return read_state(target), None
    except CorruptState as exc:
        reason = str(exc)
    try:
        aside = _move_aside(target)
    except OSError as exc:
        return None, f"{reason}; could not move it aside ({exc.strerror or exc})"
    return None, f"{reason}; moved aside to {aside.name}; rebuilding state from observation"


def _move_aside(target: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = target.with_name(f"{target.name}.corrupt-{stamp}")
    suffix = 1
    while aside.exists():
        aside = target.with_name(f"{target.name}.corrupt-{stamp}-{suffix}")
        suffix += 1
    os.rename(target, aside)
    return aside


def _remove_stale_temp_files(target: Path) -> None:
    for temp in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            temp.unlink()


def load_yaml(text: str, source: str) -> Any:
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ShapeError(f"{source}:{line}: not valid YAML: {exc.problem}") from None
    except YAMLError as exc:
        raise ShapeError(f"{source}: not valid YAML: {exc}") from None


def state_from_document(data: Any, source: str) -> State:
    """The state from plain values, shape-checked (ShapeError naming `source` otherwise)."""
    version = data.get("version") if isinstance(data, dict) else None
    if version != STATE_VERSION or isinstance(version, bool):
        found = "no version" if version is None else f"version {version}"
        raise ShapeError(f"{source}: {found}; this reconciler reads version {STATE_VERSION}")
    record = check(StateRecord, data, source)
    return State(
        version=record.version,
        revision=record.revision,
        revision_dirty=record.revision_dirty,
        applied_at=record.applied_at,
        models=_records(record, data, source),
        problems=[p.model_dump() for p in record.problems],
    )


def _records(checked: StateRecord, data: Any, source: str) -> dict[str, InstanceRecord]:
    """The records of a checked file (a state file or an observed one), by model id."""
    records = {}
    for model_id, model in checked.models.items():
        check_id(data, source, model_id, model.id)
        records[model_id] = record_of(model_id, model)
    return records


def check_id(data: Any, source: str, model_id: str, inner: str | None) -> None:
    if inner is not None and inner != model_id:
        line = line_of(data["models"][model_id], "id")
        where = f"{source}:{line}" if line else source
        raise ShapeError(f"{where}: models.{model_id}.id: id {inner!r} under key {model_id!r}")


def line_of(mapping: Any, key: str) -> int | None:
    with contextlib.suppress(Exception):
        return mapping.lc.key(key)[0] + 1
    return None


# ---- observed-state files -------------------------------------------------------------------


def read_observed(path: str | os.PathLike[str]) -> dict[str, InstanceRecord]:
    """An observed-state file: a state file, or a hand-written minimal one.

    `{version: 1, models: {id: {status, gpus, memory_mb, port, spec_hash}}}`; every key may be
    left out: version 1, status running (a listed model is one that runs), no GPUs, 0 MiB per
    GPU, no port, and no spec_hash, which means "started from the current spec". A misspelt
    key is an error, not a silent default.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ObservedFileError(f"{source}: cannot read: {exc}") from exc
    try:
        return parse_observed(load_yaml(text, source), source)
    except ShapeError as exc:
        raise ObservedFileError(str(exc)) from None


def parse_observed(data: Any, source: str = "<observed>") -> dict[str, InstanceRecord]:
    """Observed models from already-loaded YAML/JSON data (see read_observed), as the planner
    reads them."""
    try:
        record = check(ObservedRecord, {} if data is None else data, source)
        if record.version != STATE_VERSION:
            line = line_of(data, "version")
            where = f"{source}:{line}" if line else source
            raise ShapeError(f"{where}: version: version {record.version}; expected 1")
        return {mid: planner_view(r) for mid, r in _records(record, data, source).items()}
    except ShapeError as exc:
        raise ObservedFileError(str(exc)) from None


# ---- errors in an operator's words ----------------------------------------------------------


Checked = TypeVar("Checked", bound=BaseModel)


def check(model: type[Checked], data: Any, source: str) -> Checked:
    """`data` as `model`, or ShapeError with file:line and the field's path."""
    if not isinstance(data, Mapping):
        raise ShapeError(f"{source}: expected a mapping, found {kind(data)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ShapeError(explain(exc, model, data, source)) from None


_MESSAGES = {
    "int_type": "expected a whole number",
    "float_type": "expected a number",
    "string_type": "expected text",
    "bool_type": "expected true or false",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "list_type": "expected a list",
    "greater_than_equal": "must not be negative",
}


def explain(exc: ValidationError, model: type[BaseModel], data: Any, source: str) -> str:
    error = exc.errors(include_url=False)[0]
    loc = [part for part in error["loc"] if part != "[key]"]
    kind_of_error = error["type"]
    if kind_of_error == "extra_forbidden":
        known = _known_fields(model, data, loc)
        message = f"unknown field (known: {', '.join(sorted(known))})"
    elif error["loc"][-1:] == ("[key]",):
        message = f"key {error['input']!r} is not text"
        loc = loc[:-1]
    elif kind_of_error in _MESSAGES:
        message = f"{_MESSAGES[kind_of_error]}, found {kind(error['input'])}"
        if kind_of_error == "greater_than_equal":
            message = _MESSAGES[kind_of_error]
    else:
        message = error["msg"]
    path = _dotted(loc)
    line = _line(data, loc)
    where = source if line is None else f"{source}:{line}"
    return f"{where}: {path}: {message}" if path else f"{where}: {message}"


def _known_fields(model: type[BaseModel], data: Any, loc: list[Any]) -> set[str]:
    # the unknown key sits in the top mapping or in a model under `models`
    inner = ObservedModelRecord if len(loc) > 1 else model
    return set(inner.model_fields)


def _dotted(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line(data: Any, loc: list[Any]) -> int | None:
    """The line of the innermost key or item of `loc` that the YAML has a mark for."""
    line = None
    node = data
    for part in loc:
        with contextlib.suppress(Exception):
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0] + 1
            elif isinstance(node, CommentedSeq) and isinstance(part, int):
                line = node.lc.item(part)[0] + 1
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
    return line

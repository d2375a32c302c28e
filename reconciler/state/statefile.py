"""The state file: what the reconciler last did and saw, as human-readable YAML.

Written with the one atomic write (state.files), so a reader or a crash sees the old file or
the new one, never a mix.
The last line is an end marker: a file cut short by something else (a full disk, a careless
copy) is detected even when what remains still parses. A corrupt file is moved aside, never
deleted, and the reconciler rebuilds its state from observation (engines carry their own
identity, so nothing is lost but counters and the last error).

The same reader accepts the observed-state files of `reconciler plan --observed FILE`: a state
file, or a minimal hand-written `{models: {id: {gpus: [0], memory_mb: 8000}}}`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.representer import RoundTripRepresenter

from reconciler.core.instance import InstanceRecord, Status

try:  # PyYAML built with libyaml: the fast path; without it ruamel reads and writes everything
    import yaml as _pyyaml
    from yaml import CSafeDumper as _CSafeDumper
    from yaml import CSafeLoader as _CSafeLoader
except ImportError:  # pragma: no cover - PyYAML without its C extension
    _pyyaml = None  # type: ignore[assignment]
    _CSafeDumper = None  # type: ignore[assignment,misc]
    _CSafeLoader = None  # type: ignore[assignment,misc]
from reconciler.state.directory import atomic_write
from reconciler.state.shape import (
    ModelRecord,
    ShapeError,
    StateRecord,
    check,
)

STATE_VERSION = 1
HEADER = "# Reconciler state, rewritten on every pass: read it, do not edit it.\n"
END_MARKER = "# end of reconciler state"


class CorruptState(Exception):
    """The state file exists but is not a complete version-1 state; the message says why."""


@dataclass
class State:
    """The whole state file."""

    version: int = STATE_VERSION
    revision: str | None = None
    revision_dirty: bool = False
    applied_at: float | None = None
    models: dict[str, InstanceRecord] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    """problems of the last invalid desired state (empty when it was valid), as
    Problem.to_dict(): {file, line, field, message, severity}"""


# ---- writing --------------------------------------------------------------------------------


def write_state(path: str | os.PathLike[str], state: State) -> None:
    """Replace the state file atomically; on any error the old file is left as it was."""
    atomic_write(path, render_state(state))


def render_state(state: State) -> str:
    """The state file's text: header comment, YAML, end marker. Written by libyaml's emitter
    when PyYAML has it (~10x faster than ruamel's on a host of hundreds of models: the state
    is rewritten on every pass), else by ruamel; both write text that YAML 1.1 and 1.2 readers
    read back the same (a test holds them to it)."""
    document = state_document(state)
    if _StateDumper is not None:
        body = _pyyaml.dump(
            document,
            Dumper=_StateDumper,
            default_flow_style=False,
            allow_unicode=True,
            width=4096,  # a log line stays on one line
            sort_keys=False,
        )
    else:
        buffer = io.StringIO()
        _ruamel_writer().dump(document, buffer)
        body = buffer.getvalue()
    return f"{HEADER}{body}{END_MARKER}\n"


class _Flow(list):  # type: ignore[type-arg]
    """A list written on one line: `gpus: [0, 1]` reads better than a block list."""


class _Quoted(str):
    """Text written in double quotes, with escapes."""

    __slots__ = ()


def state_document(state: State) -> dict[str, Any]:
    """The state as plain values (what the file holds; JSON can carry it too)."""
    return {
        "version": state.version,
        "revision": _text(state.revision),
        "revision_dirty": state.revision_dirty,
        "applied_at": state.applied_at,
        "models": {
            model_id: _model_document(model) for model_id, model in sorted(state.models.items())
        },
        "problems": [
            {
                "file": _text(p["file"]),
                "line": p["line"],
                "field": _text(p["field"]),
                "message": _text(p["message"]),
                "severity": p["severity"],
            }
            for p in state.problems
        ],
    }


def _model_document(model: InstanceRecord) -> dict[str, Any]:
    """One record as the file holds it: the keys of its shape (ModelRecord), in its order."""
    return {name: _plain(name, getattr(model, name)) for name in ModelRecord.model_fields}


def _plain(name: str, value: object) -> object:
    if isinstance(value, Status):
        return str(value)
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, tuple):
        return _Flow(value) if name in _ONE_LINE else [_plain(name, item) for item in value]
    return value


_ONE_LINE = frozenset({"gpus"})
"""lists written on one line"""


_YAML_LINE_BREAKS = frozenset("\x85\u2028\u2029")
"""line breaks to YAML 1.1 only: in plain or single-quoted text a 1.2 reader keeps them as
characters while a 1.1 reader folds them; escaped in double quotes, both read them back"""

_NOT_PLAIN = re.compile(r"[-+.0-9~]|(?:null|true|false|yes|no|on|off|y|n)$", re.IGNORECASE)
"""text that some YAML reader (1.1 or 1.2) could take for a number, a boolean or null when
written plain (1.2 reads `1e3` and `0o17` as numbers, 1.1 reads `on` as true): quoted"""


def _text(value: str | None) -> str | None:
    """Engine output is arbitrary text; keep every character through a round trip."""
    if value is not None and not _YAML_LINE_BREAKS.isdisjoint(value):
        return _Quoted(value)
    return value


def _ruamel_writer() -> YAML:
    yaml = YAML(typ="rt")
    yaml.default_flow_style = False
    yaml.allow_unicode = True
    yaml.width = 4096  # a log line stays on one line
    yaml.Representer = _StateRepresenter
    return yaml


class _StateRepresenter(RoundTripRepresenter):
    """`pid: null` says "none" more plainly than ruamel's default empty value.

    A subclass: add_representer on ruamel's own class would change every YAML dump in the
    process.
    """


def _represent_text(representer: Any, data: str) -> Any:
    if isinstance(data, _Quoted):
        style: str | None = '"'
    else:
        style = "'" if data == "" or _NOT_PLAIN.match(data) else None
    return representer.represent_scalar("tag:yaml.org,2002:str", str(data), style=style)


def _represent_flow(representer: Any, data: list[Any]) -> Any:
    return representer.represent_sequence("tag:yaml.org,2002:seq", list(data), flow_style=True)


_StateRepresenter.add_representer(
    type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
)
_StateRepresenter.add_representer(str, _represent_text)
_StateRepresenter.add_representer(_Quoted, _represent_text)
_StateRepresenter.add_representer(_Flow, _represent_flow)

if _CSafeDumper is not None:

    class _StateDumper(_CSafeDumper):  # type: ignore[misc,valid-type]
        """libyaml's emitter with the state file's quoting (a subclass, for the same reason)."""

    _StateDumper.add_representer(str, _represent_text)
    _StateDumper.add_representer(_Quoted, _represent_text)
    _StateDumper.add_representer(_Flow, _represent_flow)
else:  # pragma: no cover - PyYAML without its C extension
    _StateDumper = None  # type: ignore[assignment,misc]


# ---- reading --------------------------------------------------------------------------------


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
    models = {}
    for model_id, m in record.models.items():
        check_id(data, source, model_id, m.id)
        models[model_id] = record_of(model_id, m)
    return State(
        version=record.version,
        revision=record.revision,
        revision_dirty=record.revision_dirty,
        applied_at=record.applied_at,
        models=models,
        problems=[p.model_dump() for p in record.problems],
    )


def record_of(model_id: str, checked: ModelRecord) -> InstanceRecord:
    """The record a checked model of the file holds: every key of the shape, lists as tuples
    (the shape's keys and the record's fields are the same names: a test holds them to it)."""
    values = {name: getattr(checked, name) for name in ModelRecord.model_fields}
    values.update(
        id=model_id, gpus=tuple(checked.gpus), last_log_lines=tuple(checked.last_log_lines)
    )
    return InstanceRecord(**values)


def check_id(data: Any, source: str, model_id: str, inner: str | None) -> None:
    if inner is not None and inner != model_id:
        line = line_of(data["models"][model_id], "id")
        where = f"{source}:{line}" if line else source
        raise ShapeError(f"{where}: models.{model_id}.id: id {inner!r} under key {model_id!r}")


def line_of(mapping: Any, key: str) -> int | None:
    with contextlib.suppress(Exception):
        return mapping.lc.key(key)[0] + 1
    return None

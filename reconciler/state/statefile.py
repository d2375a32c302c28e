"""The state file: what the reconciler last did and saw, as human-readable YAML.

Written atomically (a temp file in the same directory, flush, fsync, rename over the old file,
fsync the directory), so a reader or a crash sees the old file or the new one, never a mix.
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
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from reconciler.core.observed import ObservedModel, Status
from reconciler.core.problems import Problem

STATE_VERSION = 1
HEADER = "# Reconciler state, rewritten on every pass: read it, do not edit it.\n"
END_MARKER = "# end of reconciler state"
NEW_FILE_MODE = 0o644
"""Status is for operators to read (like a pid file); an existing file keeps its own mode."""


class CorruptState(Exception):
    """The state file exists but is not a complete version-1 state; the message says why."""


class ObservedFileError(Exception):
    """An observed-state file cannot be used; the message names the file, line and field."""


@dataclass
class ModelState:
    """One model as the reconciler last left it."""

    id: str
    status: Status = Status.stopped
    pid: int | None = None
    container_id: str | None = None
    port: int | None = None
    gpus: list[int] = field(default_factory=list)
    memory_mb: int = 0
    """reservation per GPU, MiB"""
    spec_hash: str | None = None
    restarts: int = 0
    """restarts in a row (reset once the engine is healthy)"""
    restarts_total: int = 0
    last_error: str | None = None
    last_log_lines: list[str] = field(default_factory=list)
    last_transition: float = 0.0
    """unix time of the last status change"""
    next_retry_at: float | None = None
    given_up: bool = False
    started_at: float | None = None
    probe_failures: int = 0
    """failed liveness probes in a row of a ready engine: counted across one-shot `apply`
    runs, so that a hung engine reaches its failure_threshold without a daemon"""


@dataclass
class State:
    """The whole state file."""

    version: int = STATE_VERSION
    revision: str | None = None
    revision_dirty: bool = False
    applied_at: float | None = None
    models: dict[str, ModelState] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    """problems of the last invalid desired state (empty when it was valid), as
    Problem.to_dict(): {file, line, field, message, severity}"""


# ---- writing --------------------------------------------------------------------------------


def write_state(path: str | os.PathLike[str], state: State) -> None:
    """Replace the state file atomically; on any error the old file is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = render_state(state)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), _mode_of(target))
            out.write(text)
            out.flush()
            os.fsync(out.fileno())  # the data is on disk before the name points at it
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(target.parent)  # ... and the rename itself survives a power loss


def render_state(state: State) -> str:
    """The state file's text: header comment, YAML, end marker."""
    buffer = io.StringIO()
    _yaml().dump(_state_to_yaml(state), buffer)
    return f"{HEADER}{buffer.getvalue()}{END_MARKER}\n"


def _mode_of(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        return NEW_FILE_MODE


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _state_to_yaml(state: State) -> CommentedMap:
    document = CommentedMap(
        version=state.version,
        revision=_text(state.revision),
        revision_dirty=state.revision_dirty,
        applied_at=state.applied_at,
    )
    document["models"] = CommentedMap(
        (model_id, _model_to_yaml(model)) for model_id, model in sorted(state.models.items())
    )
    document["problems"] = [
        CommentedMap(
            file=_text(p["file"]),
            line=p["line"],
            field=_text(p["field"]),
            message=_text(p["message"]),
            severity=p["severity"],
        )
        for p in state.problems
    ]
    return document


def _model_to_yaml(model: ModelState) -> CommentedMap:
    gpus = CommentedSeq(model.gpus)
    gpus.fa.set_flow_style()  # gpus: [0, 1] reads better than a block list
    return CommentedMap(
        id=model.id,
        status=str(model.status),
        pid=model.pid,
        container_id=_text(model.container_id),
        port=model.port,
        gpus=gpus,
        memory_mb=model.memory_mb,
        spec_hash=_text(model.spec_hash),
        restarts=model.restarts,
        restarts_total=model.restarts_total,
        last_error=_text(model.last_error),
        last_log_lines=[_text(line) for line in model.last_log_lines],
        last_transition=model.last_transition,
        next_retry_at=model.next_retry_at,
        given_up=model.given_up,
        started_at=model.started_at,
        probe_failures=model.probe_failures,
    )


# Unicode line breaks that YAML folds into spaces unless escaped in a double-quoted scalar.
_YAML_LINE_BREAKS = frozenset("\x85\u2028\u2029")


def _text(value: str | None) -> str | None:
    """Engine output is arbitrary text; keep every character through a round trip."""
    if value is not None and not _YAML_LINE_BREAKS.isdisjoint(value):
        return DoubleQuotedScalarString(value)
    return value


def _yaml() -> YAML:
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


_StateRepresenter.add_representer(
    type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
)


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
    try:
        return _state_from_yaml(_load_yaml(text, str(target)), str(target))
    except _ShapeError as exc:
        raise CorruptState(str(exc)) from None


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


def _load_yaml(text: str, source: str) -> Any:
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise _ShapeError(f"{source}:{line}: not valid YAML: {exc.problem}") from None
    except YAMLError as exc:
        raise _ShapeError(f"{source}: not valid YAML: {exc}") from None


def _state_from_yaml(data: Any, source: str) -> State:
    top = _Fields(data, source, "")
    version = top.get("version", _integer, None)
    if version != STATE_VERSION:
        found = "no version" if version is None else f"version {version}"
        raise _ShapeError(f"{source}: {found}; this reconciler reads version {STATE_VERSION}")
    models = top.mapping("models")
    return State(
        version=version,
        revision=top.get("revision", _optional(_string), None),
        revision_dirty=top.get("revision_dirty", _boolean, False),
        applied_at=top.get("applied_at", _optional(_number), None),
        models={model_id: _model_state(fields, model_id) for model_id, fields in models.entries()},
        problems=[_problem(item) for item in top.sequence("problems")],
    )


def _model_state(fields: _Fields, model_id: str) -> ModelState:
    fields.check_id(model_id)
    return ModelState(
        id=model_id,
        status=fields.get("status", _status, Status.stopped),
        pid=fields.get("pid", _optional(_integer), None),
        container_id=fields.get("container_id", _optional(_string), None),
        port=fields.get("port", _optional(_integer), None),
        gpus=list(fields.get("gpus", _gpu_list, ())),
        memory_mb=fields.get("memory_mb", _integer, 0),
        spec_hash=fields.get("spec_hash", _optional(_string), None),
        restarts=fields.get("restarts", _integer, 0),
        restarts_total=fields.get("restarts_total", _integer, 0),
        last_error=fields.get("last_error", _optional(_string), None),
        last_log_lines=fields.get("last_log_lines", _string_list, []),
        last_transition=fields.get("last_transition", _number, 0.0),
        next_retry_at=fields.get("next_retry_at", _optional(_number), None),
        given_up=fields.get("given_up", _boolean, False),
        started_at=fields.get("started_at", _optional(_number), None),
        probe_failures=fields.get("probe_failures", _integer, 0),
    )


def _problem(fields: _Fields) -> dict[str, Any]:
    severity = fields.get("severity", _string, "error")
    if severity not in ("error", "warning"):
        raise _ShapeError(f"{fields.where('severity')}: must be error or warning")
    problem = Problem(
        file=fields.get("file", _string, ""),
        line=fields.get("line", _integer, 0),
        field=fields.get("field", _string, ""),
        message=fields.get("message", _string, ""),
        severity=severity,
    )
    return problem.to_dict()


# ---- observed-state files (`reconciler plan --observed FILE`) -------------------------------

_STATE_KEYS = frozenset({"version", "revision", "revision_dirty", "applied_at", "problems"})
_OBSERVED_MODEL_KEYS = frozenset(
    {"id", "status", "gpus", "memory_mb", "port", "spec_hash", "given_up", "last_error"}
)
# Keys of a full state file that say nothing the planner reads: accepted, not used.
_STATE_ONLY_MODEL_KEYS = frozenset(
    {
        "pid",
        "container_id",
        "restarts",
        "restarts_total",
        "last_log_lines",
        "last_transition",
        "next_retry_at",
        "started_at",
        "probe_failures",
    }
)


def to_observed(state: State) -> dict[str, ObservedModel]:
    """The planner's view of a state: what runs where, reserving how much."""
    return {
        model_id: ObservedModel(
            id=model_id,
            status=model.status,
            gpus=tuple(model.gpus),
            memory_mb=model.memory_mb,
            port=model.port,
            spec_hash=model.spec_hash,
            given_up=model.given_up,
            last_error=model.last_error,
        )
        for model_id, model in state.models.items()
    }


def read_observed(path: str | os.PathLike[str]) -> dict[str, ObservedModel]:
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
        return parse_observed(_load_yaml(text, source), source)
    except _ShapeError as exc:
        raise ObservedFileError(str(exc)) from None


def parse_observed(data: Any, source: str = "<observed>") -> dict[str, ObservedModel]:
    """Observed models from already-loaded YAML/JSON data (see read_observed)."""
    try:
        return _observed_from_yaml(data, source)
    except _ShapeError as exc:
        raise ObservedFileError(str(exc)) from None


def _observed_from_yaml(data: Any, source: str) -> dict[str, ObservedModel]:
    top = _Fields({} if data is None else data, source, "")
    top.reject_unknown(_STATE_KEYS | {"models"})
    version = top.get("version", _integer, STATE_VERSION)
    if version != STATE_VERSION:
        raise _ShapeError(f"{top.where('version')}: version {version}; expected 1")
    models = top.mapping("models")
    return {model_id: _observed_model(fields, model_id) for model_id, fields in models.entries()}


def _observed_model(fields: _Fields, model_id: str) -> ObservedModel:
    fields.reject_unknown(_OBSERVED_MODEL_KEYS | _STATE_ONLY_MODEL_KEYS)
    fields.check_id(model_id)
    memory_mb = fields.get("memory_mb", _integer, 0)
    if memory_mb < 0:
        raise _ShapeError(f"{fields.where('memory_mb')}: must not be negative")
    return ObservedModel(
        id=model_id,
        status=fields.get("status", _status, Status.running),
        gpus=tuple(fields.get("gpus", _gpu_list, ())),
        memory_mb=memory_mb,
        port=fields.get("port", _optional(_integer), None),
        spec_hash=fields.get("spec_hash", _optional(_string), None),
        given_up=fields.get("given_up", _boolean, False),
        last_error=fields.get("last_error", _optional(_string), None),
    )


# ---- shape checking with file:line messages -------------------------------------------------


class _ShapeError(Exception):
    pass


T = TypeVar("T")
Check = Callable[[Any, str], T]


class _Fields:
    """One YAML mapping, read field by field; errors say file:line and the field's path."""

    def __init__(self, data: Any, source: str, path: str, line: int | None = None) -> None:
        self.source, self.path = source, path
        if not isinstance(data, Mapping):
            where = self._where(path, line)
            raise _ShapeError(f"{where}: expected a mapping, found {_kind(data)}")
        self.data = data

    def entries(self) -> list[tuple[str, _Fields]]:
        """(key, nested mapping) pairs of a mapping of mappings keyed by model id."""
        for key in self.data:
            if not isinstance(key, str):
                raise _ShapeError(f"{self._where(self.path, None)}: key {key!r} is not text")
        return [(key, self.child(key)) for key in self.data]

    def where(self, key: str) -> str:
        return self._where(f"{self.path}{key}", self._line(key))

    def get(self, key: str, check: Check[T], default: T) -> T:
        if key not in self.data:
            return default
        return check(self.data[key], self.where(key))

    def mapping(self, key: str) -> _Fields:
        """A nested mapping; a missing or null one is empty."""
        value = self.data.get(key)
        return _Fields({} if value is None else value, self.source, f"{self.path}{key}.")

    def child(self, key: str) -> _Fields:
        value = self.data[key]
        line = self._line(key)
        return _Fields({} if value is None else value, self.source, f"{self.path}{key}.", line)

    def sequence(self, key: str) -> list[_Fields]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise _ShapeError(f"{self.where(key)}: expected a list, found {_kind(value)}")
        return [
            _Fields(item, self.source, f"{self.path}{key}[{i}].", _item_line(value, i))
            for i, item in enumerate(value)
        ]

    def check_id(self, model_id: str) -> None:
        inner = self.data.get("id", model_id)
        if inner != model_id:
            raise _ShapeError(f"{self.where('id')}: id {inner!r} under key {model_id!r}")

    def reject_unknown(self, known: frozenset[str]) -> None:
        for key in self.data:
            if key not in known:
                names = ", ".join(sorted(known))
                raise _ShapeError(f"{self.where(str(key))}: unknown field (known: {names})")

    def _line(self, key: str) -> int | None:
        if isinstance(self.data, CommentedMap) and key in self.data:
            with contextlib.suppress(Exception):
                return self.data.lc.key(key)[0] + 1
        return None

    def _where(self, path: str, line: int | None) -> str:
        location = self.source if line is None else f"{self.source}:{line}"
        return f"{location}: {path.rstrip('.')}" if path else location


def _item_line(sequence: list[Any], index: int) -> int | None:
    if isinstance(sequence, CommentedSeq):
        with contextlib.suppress(Exception):
            return sequence.lc.item(index)[0] + 1
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(str(value) if isinstance(value, str) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _ShapeError(f"{where}: expected a whole number, found {_kind(value)}")
    return int(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _ShapeError(f"{where}: expected a number, found {_kind(value)}")
    return float(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _ShapeError(f"{where}: expected text, found {_kind(value)}")
    return str(value)


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _ShapeError(f"{where}: expected true or false, found {_kind(value)}")
    return value


def _status(value: Any, where: str) -> Status:
    try:
        return Status(value)
    except ValueError:
        allowed = ", ".join(s.value for s in Status)
        raise _ShapeError(f"{where}: unknown status {value!r} (one of {allowed})") from None


def _gpu_list(value: Any, where: str) -> list[int]:
    """GPU indexes: a list, or a single index for one GPU (hand-written files)."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items
    ):
        raise _ShapeError(f"{where}: expected a list of GPU indexes, found {_kind(value)}")
    return [int(i) for i in items]


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise _ShapeError(f"{where}: expected a list of text lines, found {_kind(value)}")
    return [str(i) for i in value]


def _optional(check: Check[T]) -> Check[T | None]:
    def optional(value: Any, where: str) -> T | None:
        return None if value is None else check(value, where)

    return optional

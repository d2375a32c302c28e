"""The state file's document: what the reconciler last did and saw, its shape declared once.

The shape (the pydantic models below, strict: a `pid: "12"` is an error, not a conversion) is
the one declaration of the file: writing walks its keys in its order, and reading checks a file
against it and takes the same keys back into the record (reconciler.core.instance.
InstanceRecord; a test holds the shape's keys to the record's fields). The observed-state files
of `reconciler plan --observed FILE` are the same shape with a default of their own (a listed
model runs) and no unknown key. Reading, and its errors in an operator's words, is
reconciler.state.reading.

The text is human-readable YAML, written with the one atomic write (state.directory), so a
reader or a crash sees the old file or the new one, never a mix. The last line is an end
marker: a file cut short by something else (a full disk, a careless copy) is detected even when
what remains still parses.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError
from ruamel.yaml import YAML
from ruamel.yaml.representer import RoundTripRepresenter

from reconciler.core.instance import InstanceRecord, Status, planner_view
from reconciler.state.directory import atomic_write

try:  # PyYAML built with libyaml: the fast path; without it ruamel writes everything
    import yaml as _pyyaml
    from yaml import CSafeDumper as _CSafeDumper
except ImportError:  # pragma: no cover - PyYAML without its C extension
    _pyyaml = None  # type: ignore[assignment]
    _CSafeDumper = None  # type: ignore[assignment,misc]

STATE_VERSION = 1
HEADER = "# Reconciler state, rewritten on every pass: read it, do not edit it.\n"
END_MARKER = "# end of reconciler state"


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


# ---- the shape ------------------------------------------------------------------------------


def kind(value: Any) -> str:
    """A value as a message shows it: short, and never the whole of a long string."""
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


def _status(value: Any) -> Status:
    try:
        return Status(value)
    except ValueError:
        allowed = ", ".join(s.value for s in Status)
        raise PydanticCustomError(
            "status",
            "unknown status {value} (one of {allowed})",
            {"value": repr(value), "allowed": allowed},
        ) from None


def _gpu_list(value: Any) -> list[int]:
    """GPU indexes: a list, or a single index for one GPU (hand-written files)."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items
    ):
        raise PydanticCustomError(
            "gpus", "expected a list of GPU indexes, found {found}", {"found": kind(value)}
        )
    return [int(i) for i in items]


def _mapping_of_mappings(value: Any) -> Any:
    """`models:` left empty, or a model left empty, means "none" / "all defaults"."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {k: ({} if v is None else v) for k, v in value.items()}
    return value


StatusField = Annotated[Status, BeforeValidator(_status)]
GPUs = Annotated[list[int], BeforeValidator(_gpu_list)]


class _Strict(BaseModel):
    # defer_build: the validators are built when a file is first read, not on import; a pass
    # that finds no state file (a host's first `apply`) launches its engines without them
    model_config = ConfigDict(strict=True, frozen=True, defer_build=True)


class ModelRecord(_Strict):
    """One model in the state file; every key may be left out."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    id: str | None = None
    status: StatusField = Status.stopped
    pid: int | None = None
    container_id: str | None = None
    port: int | None = None
    gpus: GPUs = []
    memory_mb: int = 0
    spec_hash: str | None = None
    restarts: int = 0
    restarts_total: int = 0
    last_error: str | None = None
    last_log_lines: list[str] = []
    last_transition: float = 0.0
    next_retry_at: float | None = None
    given_up: bool = False
    started_at: float | None = None
    probe_failures: int = 0


class ProblemRecord(_Strict):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    file: str = ""
    line: int = 0
    field: str = ""
    message: str = ""
    severity: Annotated[str, BeforeValidator(lambda v: _one_of(v, ("error", "warning")))] = "error"


def _one_of(value: Any, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        raise PydanticCustomError("one_of", "must be {allowed}", {"allowed": " or ".join(allowed)})
    return value


class StateRecord(_Strict):
    """The whole state file (its version is checked before this model is)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    version: int
    revision: str | None = None
    revision_dirty: bool = False
    applied_at: float | None = None
    models: Annotated[dict[str, ModelRecord], BeforeValidator(_mapping_of_mappings)] = {}
    problems: Annotated[list[ProblemRecord], BeforeValidator(lambda v: [] if v is None else v)] = []


class ObservedModelRecord(ModelRecord):
    """A model in a hand-written observed file: the state file's keys, a misspelt one refused;
    a listed model is one that runs, and reserves no negative memory."""

    model_config = ConfigDict(extra="forbid")

    status: StatusField = Status.running
    memory_mb: Annotated[int, Field(ge=0)] = 0


_ObservedModels = Annotated[dict[str, ObservedModelRecord], BeforeValidator(_mapping_of_mappings)]


class ObservedRecord(StateRecord):
    """An observed-state file: a state file, or a minimal hand-written one (version 1 when left
    out)."""

    model_config = ConfigDict(extra="forbid")

    version: int = STATE_VERSION
    # the models are checked as the stricter subclass: a narrowed dict value to mypy
    models: _ObservedModels = {}  # type: ignore[assignment]


# ---- the document ---------------------------------------------------------------------------


def state_document(state: State) -> dict[str, Any]:
    """The state as plain values, keys in the shape's order (what the file holds; JSON can
    carry it too)."""
    document: dict[str, Any] = {}
    for name in StateRecord.model_fields:
        if name == "models":
            models = sorted(state.models.items())
            document[name] = {model_id: _model_document(model) for model_id, model in models}
        elif name == "problems":
            keys = ProblemRecord.model_fields
            document[name] = [{key: _plain(key, p[key]) for key in keys} for p in state.problems]
        else:
            document[name] = _plain(name, getattr(state, name))
    return document


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


def record_of(model_id: str, checked: ModelRecord) -> InstanceRecord:
    """The record a checked model of a file holds: every key of the shape, lists as tuples."""
    values = {name: getattr(checked, name) for name in ModelRecord.model_fields}
    values.update(id=model_id, gpus=tuple(checked.gpus))
    values.update(last_log_lines=tuple(checked.last_log_lines))
    return InstanceRecord(**values)


def to_observed(state: State) -> dict[str, InstanceRecord]:
    """The planner's view of a state: what runs where, reserving how much."""
    return {model_id: planner_view(model) for model_id, model in state.models.items()}


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


class _Flow(list[object]):
    """A list written on one line: `gpus: [0, 1]` reads better than a block list."""


class _Quoted(str):
    """Text written in double quotes, with escapes."""

    __slots__ = ()


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

    class _StateDumper(_CSafeDumper):
        """libyaml's emitter with the state file's quoting (a subclass, for the same reason)."""

    _StateDumper.add_representer(str, _represent_text)
    _StateDumper.add_representer(_Quoted, _represent_text)
    _StateDumper.add_representer(_Flow, _represent_flow)
else:  # pragma: no cover - PyYAML without its C extension
    _StateDumper = None  # type: ignore[assignment,misc]

"""The shape of the state file and of observed-state files, checked by pydantic models.

The models check types strictly (a `pid: "12"` is an error, not a conversion) and say what
was wrong in an operator's words; `explain` turns pydantic's first error into
`file:line: models.qwen2-7b.memory_mb: expected a whole number, found 'lots'`, with the line
taken from the YAML that was read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from reconciler.core.instance import Status


class ShapeError(Exception):
    """A file that is not the expected shape; the message names file, line and field."""


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


class ObservedModelRecord(_Strict):
    """A model in a hand-written observed file: a listed model is one that runs."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    id: str | None = None
    status: StatusField = Status.running
    gpus: GPUs = []
    memory_mb: Annotated[int, Field(ge=0)] = 0
    port: int | None = None
    spec_hash: str | None = None
    given_up: bool = False
    last_error: str | None = None
    # keys of a full state file that say nothing the planner reads: accepted, not used
    pid: Any = None
    container_id: Any = None
    restarts: Any = None
    restarts_total: Any = None
    last_log_lines: Any = None
    last_transition: Any = None
    next_retry_at: Any = None
    started_at: Any = None
    probe_failures: Any = None


class ObservedRecord(_Strict):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    version: int = 1
    revision: Any = None
    revision_dirty: Any = None
    applied_at: Any = None
    problems: Any = None
    models: Annotated[dict[str, ObservedModelRecord], BeforeValidator(_mapping_of_mappings)] = {}


def check(model: type[_Strict], data: Any, source: str) -> Any:
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


def explain(exc: ValidationError, model: type[_Strict], data: Any, source: str) -> str:
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


def _known_fields(model: type[_Strict], data: Any, loc: list[Any]) -> set[str]:
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

"""Observed-state files (`reconciler plan --observed FILE`): what runs where, for a plan made
away from the host. A state file is one; so is a hand-written minimal one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reconciler.core.instance import InstanceRecord, planner_view
from reconciler.state.shape import ObservedRecord, ShapeError, check
from reconciler.state.statefile import (
    STATE_VERSION,
    State,
    check_id,
    line_of,
    load_yaml,
)


class ObservedFileError(Exception):
    """An observed-state file cannot be used; the message names the file, line and field."""


def to_observed(state: State) -> dict[str, InstanceRecord]:
    """The planner's view of a state: what runs where, reserving how much."""
    return {model_id: planner_view(model) for model_id, model in state.models.items()}


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
    """Observed models from already-loaded YAML/JSON data (see read_observed)."""
    try:
        record = check(ObservedRecord, {} if data is None else data, source)
        if record.version != STATE_VERSION:
            line = line_of(data, "version")
            where = f"{source}:{line}" if line else source
            raise ShapeError(f"{where}: version: version {record.version}; expected 1")
        observed = {}
        for model_id, m in record.models.items():
            check_id(data, source, model_id, m.id)
            observed[model_id] = InstanceRecord(
                id=model_id,
                status=m.status,
                port=m.port,
                gpus=tuple(m.gpus),
                memory_mb=m.memory_mb,
                spec_hash=m.spec_hash,
                last_error=m.last_error,
                given_up=m.given_up,
            )
        return observed
    except ShapeError as exc:
        raise ObservedFileError(str(exc)) from None

"""Learned GPU memory, kept in the state directory (`memory.json`) so it survives restarts.

Per model and spec hash: the estimate, the latest measurement and the peak. A changed spec hash
starts afresh (other parameters, other memory); a few older hashes are kept so that a rollback
finds what its spec was measured to use.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from reconciler.core.memory import MemoryFigures
from reconciler.state.files import atomic_write

MEMORY_FILE = "memory.json"
VERSION = 1
HASHES_KEPT = 4

Learned = dict[str, dict[str, MemoryFigures]]
"""model id -> spec hash -> figures"""


def read_learned(state_dir: str | os.PathLike[str]) -> Learned:
    """What was learned; an unreadable or foreign file is nothing learned (it is only a cache of
    measurements: the next measurement rebuilds it)."""
    try:
        return parse_learned((Path(state_dir) / MEMORY_FILE).read_bytes())
    except OSError:
        return {}


def parse_learned(data: bytes) -> Learned:
    """memory.json's content, as read_learned reads it (nothing learned if it is not one)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        return {}
    learned: Learned = {}
    for model_id, hashes in (doc.get("models") or {}).items():
        if not isinstance(hashes, dict):
            continue
        for spec_hash, fields in hashes.items():
            figures = _figures(fields)
            if figures is not None:
                learned.setdefault(str(model_id), {})[str(spec_hash)] = figures
    return learned


def write_learned(state_dir: str | os.PathLike[str], learned: Learned) -> None:
    models = {
        model_id: {h: asdict(f) for h, f in list(hashes.items())[-HASHES_KEPT:]}
        for model_id, hashes in sorted(learned.items())
    }
    # insertion order is age order (oldest hash first): never sort the hashes
    text = json.dumps({"version": VERSION, "models": models}, indent=1)
    atomic_write(Path(state_dir) / MEMORY_FILE, text + "\n")


def _figures(fields: object) -> MemoryFigures | None:
    if not isinstance(fields, dict):
        return None
    values = {}
    for name in ("estimated_mb", "measured_mb", "peak_mb"):
        value = fields.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return None
        values[name] = value
    measured_by = fields.get("measured_by")
    if measured_by is not None and not isinstance(measured_by, str):
        return None
    return MemoryFigures(measured_by=measured_by, **values)

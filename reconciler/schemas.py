"""The checked-in JSON Schemas (schemas/*.schema.json), generated from reconciler.core.spec."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.core.spec import cluster_json_schema, model_json_schema

SCHEMA_FILES = {
    "model.schema.json": model_json_schema,
    "cluster.schema.json": cluster_json_schema,
}


def render(name: str) -> str:
    return json.dumps(SCHEMA_FILES[name](), indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SCHEMA_FILES:
        path = directory / name
        path.write_text(render(name), encoding="utf-8")
        written.append(path)
    return written


def stale_schemas(directory: Path) -> list[str]:
    """Names of schema files that are missing or differ from what spec.py generates."""
    stale = []
    for name in SCHEMA_FILES:
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(name):
            stale.append(name)
    return stale

"""The checked-in JSON Schemas (schemas/*.schema.json), generated from reconciler.core.spec.

The core does not know the frameworks; the schema an editor validates against does: the
`framework` enum is filled from the engine registry here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.core.cluster import cluster_json_schema
from reconciler.core.spec import model_json_schema
from reconciler.engines.registry import FRAMEWORKS


def model_schema() -> dict[str, Any]:
    """The model spec's schema, with the registry's frameworks as the `framework` choices."""
    schema = model_json_schema()
    framework = schema["properties"]["framework"]
    framework["enum"] = list(FRAMEWORKS)
    framework["description"] = "the engine that runs the model: " + ", ".join(FRAMEWORKS)
    return schema


SCHEMA_FILES = {
    "model.schema.json": model_schema,
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

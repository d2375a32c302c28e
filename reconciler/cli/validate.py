"""`reconciler validate` (JSON Schema per file, then checks across files) and `reconciler schema
export`: the checked-in JSON Schemas (schemas/*.schema.json), generated from
reconciler.core.spec and reconciler.core.cluster.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli import command_app
from reconciler.cli.loading import Format, print_problems, read_desired, validate_here
from reconciler.cli.options import DEFAULT_DIR, DirArg, RevOpt, out, usage_error
from reconciler.core.cluster import cluster_json_schema, host_json_schema
from reconciler.core.spec import JSONSchema, model_json_schema
from reconciler.engines.registry import FRAMEWORKS


def model_schema() -> JSONSchema:
    """The model spec's schema, with the registry's frameworks as the `framework` choices."""
    schema = model_json_schema()
    framework = schema["properties"]["framework"]
    framework["enum"] = list(FRAMEWORKS)
    framework["description"] = "the engine that runs the model: " + ", ".join(FRAMEWORKS)
    return schema


SCHEMA_FILES = {
    "model.schema.json": model_schema,
    "cluster.schema.json": cluster_json_schema,
    "host.schema.json": host_json_schema,
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


app = command_app()
schema_app = command_app(help="JSON Schemas of the spec files.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")


@schema_app.command("export")
def schema_export(
    directory: Annotated[Path, typer.Argument(help="where to write the schemas")] = Path("schemas"),
) -> None:
    """Write model.schema.json and cluster.schema.json generated from the pydantic models."""
    for path in write_schemas(directory):
        out.print(f"wrote {path}")


@app.command("validate")
def validate_cmd(
    directory: DirArg = Path(DEFAULT_DIR),
    rev: RevOpt = None,
    fmt: Annotated[Format, typer.Option("--format", help="text, json, or github")] = Format.text,
    no_path_check: Annotated[
        bool, typer.Option("--no-path-check", help="do not warn about model files absent here")
    ] = False,
    staged: Annotated[
        bool, typer.Option("--staged", help="validate what git's index holds (pre-commit hook)")
    ] = False,
) -> None:
    """Validate desired state: JSON Schema per file, then checks across files."""
    if staged and rev:
        raise usage_error("--staged and --rev exclude each other")
    raw = read_desired(directory, rev, staged)
    result = validate_here(raw, check_paths=not no_path_check)
    if fmt is Format.json:
        doc = {"valid": result.valid, "problems": [p.to_dict() for p in result.problems]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print_problems(result.problems, fmt)
        if fmt is Format.text:
            count = f"{len(raw.models)} model(s)"
            if raw.hosts:
                count += f", {len(raw.hosts)} host(s)"
            verdict = "[green]valid[/]" if result.valid else "[red]invalid[/]"
            errors, warnings = len(result.errors), len(result.problems) - len(result.errors)
            out.print(
                f"{directory}: {verdict} ({count} read, {errors} error(s), {warnings} warning(s))"
            )
    raise typer.Exit(0 if result.valid else 1)

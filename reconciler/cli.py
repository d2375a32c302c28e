"""The `reconciler` command.

Exit codes: 0 success (warnings allowed), 1 invalid desired state or a failed action, 2 usage errors
(unknown option, a directory or revision that does not exist).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from reconciler.load import LoadError, RawDesiredState, load_directory, load_revision
from reconciler.problems import Problem
from reconciler.validate import ValidationResult, validate

app = typer.Typer(
    help="A GitOps reconciler for LLM inference engines on GPU servers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
schema_app = typer.Typer(help="JSON Schemas of the spec files.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_DIR = "desired-state"


class Format(StrEnum):
    text = "text"
    json = "json"
    github = "github"


DirArg = Annotated[Path, typer.Argument(help="the desired-state directory")]
RevOpt = Annotated[
    str | None, typer.Option("--rev", help="read the directory as committed at this git revision")
]


def usage_error(message: str) -> typer.Exit:
    err.print(f"error: {message}")
    return typer.Exit(2)


def read_desired(directory: Path, rev: str | None) -> RawDesiredState:
    """Load from the working tree or a revision; a bad location is a usage error (exit 2)."""
    try:
        return load_revision(directory, rev) if rev else load_directory(directory)
    except LoadError as exc:
        raise usage_error(str(exc)) from exc


def validate_here(raw: RawDesiredState, *, check_paths: bool = True) -> ValidationResult:
    """Validate with this host's checks: engine parameters, and model files present."""
    from reconciler import modelfiles
    from reconciler.flags import KNOWN_PARAMETERS

    path_check = modelfiles.missing_message if check_paths else None
    return validate(raw, path_check=path_check, known_parameters=KNOWN_PARAMETERS)


def print_problems(problems: list[Problem], fmt: Format) -> None:
    if fmt is Format.github:
        for p in problems:
            kind = "error" if p.is_error else "warning"
            title = f",title={p.field}" if p.field else ""
            message = p.message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
            out.print(f"::{kind} file={p.file},line={p.line}{title}::{message}", markup=False)
        return
    for p in problems:
        style = "red" if p.is_error else "yellow"
        out.print(f"[{style}]{p.location()}[/]: {p.severity}: ", end="")
        out.print(f"{p.field}: {p.message}" if p.field else p.message, markup=False)


@app.command("validate")
def validate_cmd(
    directory: DirArg = Path(DEFAULT_DIR),
    rev: RevOpt = None,
    fmt: Annotated[Format, typer.Option("--format", help="text, json, or github")] = Format.text,
    no_path_check: Annotated[
        bool, typer.Option("--no-path-check", help="do not warn about model files absent here")
    ] = False,
) -> None:
    """Validate desired state: JSON Schema per file, then checks across files."""
    raw = read_desired(directory, rev)
    result = validate_here(raw, check_paths=not no_path_check)
    if fmt is Format.json:
        doc = {"valid": result.valid, "problems": [p.to_dict() for p in result.problems]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print_problems(result.problems, fmt)
        if fmt is Format.text:
            count = len(raw.models)
            verdict = "[green]valid[/]" if result.valid else "[red]invalid[/]"
            errors, warnings = len(result.errors), len(result.problems) - len(result.errors)
            out.print(
                f"{directory}: {verdict} ({count} model(s) read, {errors} error(s), "
                f"{warnings} warning(s))"
            )
    raise typer.Exit(0 if result.valid else 1)


@schema_app.command("export")
def schema_export(
    directory: Annotated[Path, typer.Argument(help="where to write the schemas")] = Path("schemas"),
) -> None:
    """Write model.schema.json and cluster.schema.json generated from the pydantic models."""
    from reconciler.schemas import write_schemas

    for path in write_schemas(directory):
        out.print(f"wrote {path}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)

"""`reconciler validate`: JSON Schema per file, then checks across files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import command_app
from .desired import read_desired, validate_here
from .options import DEFAULT_DIR, DirArg, RevOpt, out, usage_error
from .problems import Format, print_problems

app = command_app()


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
            count = len(raw.models)
            verdict = "[green]valid[/]" if result.valid else "[red]invalid[/]"
            errors, warnings = len(result.errors), len(result.problems) - len(result.errors)
            out.print(
                f"{directory}: {verdict} ({count} model(s) read, {errors} error(s), "
                f"{warnings} warning(s))"
            )
    raise typer.Exit(0 if result.valid else 1)

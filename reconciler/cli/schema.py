"""`reconciler schema export`: the JSON Schemas of the spec files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.schemas import write_schemas

from . import command_app
from .options import out

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

"""What every command shares: the consoles, the common arguments, the host settings.

Host settings (the state directory...) come from flags and RECONCILER_* environment variables,
never from git.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_DIR = "desired-state"

DirArg = Annotated[Path, typer.Argument(help="the desired-state directory")]
RevOpt = Annotated[
    str | None, typer.Option("--rev", help="read the directory as committed at this git revision")
]


def usage_error(message: str) -> typer.Exit:
    err.print(f"error: {message}")
    return typer.Exit(2)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "reconciler"


StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="RECONCILER_STATE_DIR",
        help="state file, engine logs and records [default: ~/.local/state/reconciler]",
        show_default=False,
    ),
]


OnceOpt = Annotated[
    bool, typer.Option("--once", help="one pass; do not wait for engines to be ready")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="seconds to wait for the host to settle")
]


def resolve_state_dir(path: Path | None) -> Path:
    return path if path is not None else default_state_dir()

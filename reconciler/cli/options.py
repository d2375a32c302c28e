"""What every command shares: the consoles, the common arguments, the host settings.

Host settings (the state directory...) come from flags and RECONCILER_* environment variables,
never from git.

The consoles `out` and `err` are made on first use (a module __getattr__): rich costs ~15 ms to
import, which `reconciler apply` pays only once its engine is launched, when it has output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    out: Console
    err: Console

DEFAULT_DIR = "desired-state"

DirArg = Annotated[Path, typer.Argument(help="the desired-state directory")]
RevOpt = Annotated[
    str | None, typer.Option("--rev", help="read the directory as committed at this git revision")
]


def __getattr__(name: str) -> Console:
    if name in ("out", "err"):
        return _console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _console(name: str) -> Console:
    console = globals().get(name)
    if console is None:
        from rich.console import Console

        console = Console(stderr=name == "err", highlight=False, soft_wrap=True)
        globals()[name] = console
    return console


def usage_error(message: str) -> typer.Exit:
    _console("err").print(f"error: {message}")
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

HostNameOpt = Annotated[
    str | None,
    typer.Option(
        "--host-name",
        envvar="RECONCILER_HOST_NAME",
        help="in a fleet (desired-state/hosts/), which host this is [default: this machine's "
        "host name up to the first dot]",
        show_default=False,
    ),
]


def host_name(name: str | None) -> str:
    """The host a command runs as: --host-name, else this machine's short host name."""
    if name:
        return name
    import socket

    from reconciler.core.fleet import short_host_name

    return short_host_name(socket.gethostname())


OnceOpt = Annotated[
    bool, typer.Option("--once", help="one pass; do not wait for engines to be ready")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="seconds to wait for the host to settle")
]


def resolve_state_dir(path: Path | None) -> Path:
    return path if path is not None else default_state_dir()


def private_state_dir(path: Path | None) -> Path:
    """The state directory of a command that starts or stops engines: made 0700 if missing,
    refused (exit 1, nothing started) if another user owns it or group or others may write it."""
    from reconciler.state.directory import UnsafeStateDir, check_private

    directory = resolve_state_dir(path)
    try:
        return check_private(directory)
    except UnsafeStateDir as exc:
        _console("err").print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from exc

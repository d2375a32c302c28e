"""The `reconciler` command.

Exit codes: 0 success (warnings allowed), 1 invalid desired state or a failed action, 2 usage errors
(unknown option, a directory or revision that does not exist).

One module per command group. A command's module is imported only when that command runs (or
its own --help is asked for): `reconciler --help` lists the commands from COMMANDS below, so it
starts without pydantic, the validator, git or the web stack. Help is click's plain text: typer's
rich rendering costs about 90 ms of CPU per call, more than half the start-up budget.

The garbage collector is off while `main()` imports (the objects made then live as long as the
process), and the process ends without collecting them: see main().
"""

from __future__ import annotations

import gc
import importlib
import sys
from typing import TYPE_CHECKING, TypedDict, Unpack

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    # typer ships its own copy of click; its groups are typed with that copy's classes
    from typer import _click as click

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module under reconciler.cli, short help: the first paragraph of its docstring;
    # tests/unit/test_cli_registry.py keeps the two equal)
    "validate": (
        "validate",
        "Validate desired state: JSON Schema per file, then checks across files.",
    ),
    "plan": ("plan", "Print what a pass would do: starts, stops, restarts, preemptions, and why."),
    "apply": (
        "apply",
        "Make the host match desired state: passes until every started engine is ready.",
    ),
    "status": ("status", "Show each model's status from the state file."),
    "restart": (
        "apply",
        "Restart a model now, clearing a given-up error (its retries start again).",
    ),
    "stop-all": ("apply", "Stop every engine this reconciler manages (processes and containers)."),
    "gpus": ("host", "Print the GPU inventory: declared in cluster.yaml, or read through NVML."),
    "run": (
        "apply",
        "The daemon: reconcile on every change, commit, engine exit, webhook and resync.",
    ),
    "events": (
        "status",
        "Print the event log (starts, stops, preemptions, crashes...), newest last.",
    ),
    "estimate": ("host", "Estimate the GPU memory a model needs (weights + KV cache + buffers)."),
    "history": (
        "history",
        "Commits that changed desired state, newest first, and what became of each here.",
    ),
    "rollback": (
        "history",
        "Restore desired state as at REV in a new commit (history is never rewritten); apply it.",
    ),
    "diff": (
        "history",
        "The spec-level difference between two revisions: models and fields, not YAML lines.",
    ),
    "backup": (
        "history",
        "Write one archive: a git bundle of the spec repository (every ref) and the state.",
    ),
    "restore": ("history", "Recreate the spec repository and the state directory from a backup."),
    "schema": ("validate", "JSON Schemas of the spec files."),
    "render": ("render", "Render desired state for a fleet."),
    "hooks": ("hooks", "Git hooks for spec repositories."),
}


class AppSettings(TypedDict, total=False):
    """What a command module may set on its Typer (absent: typer's default)."""

    cls: type[TyperGroup]
    help: str
    no_args_is_help: bool


def command_app(**settings: Unpack[AppSettings]) -> typer.Typer:
    """A Typer for a command module, with the settings every command shares."""
    return typer.Typer(
        add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False, **settings
    )


class LazyGroup(TyperGroup):
    """The top-level group: commands named in COMMANDS, their modules imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module = importlib.import_module(f"{__name__}.{COMMANDS[cmd_name][0]}")
            self.commands.update(typer.main.get_group(module.app).commands)
            _imported()
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # the same listing as click's, from COMMANDS instead of the loaded commands
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [
            (name, TyperCommand(name=name, help=text).get_short_help_str(limit))
            for name, (_, text) in COMMANDS.items()
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = command_app(
    cls=LazyGroup,
    help="A GitOps reconciler for LLM inference engines on GPU servers.",
    no_args_is_help=True,
)


@app.callback()
def _root() -> None:
    # a callback makes typer build a group (LazyGroup) even though no command is registered here
    pass


def main() -> None:
    # Start-up makes a few hundred thousand objects (modules, classes, schemas) that live as
    # long as the process: collections while importing them only walk the growing heap again
    # and again (~10% of start-up). They resume once the command's module is in (_imported).
    gc.disable()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        # The process ends here: the interpreter's last collections walk every object only to
        # free it as exit would (~60 ms for apply's modules, after its engines are ready).
        gc.freeze()


def _imported() -> None:
    """The command's module is imported: what exists now lives on, and later collections
    need not walk it (frozen); collect from here on. A no-op unless main() turned them off."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()

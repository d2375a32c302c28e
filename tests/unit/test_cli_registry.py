"""The `reconciler` command's lazy registry: `--help` lists every command without importing
any of them, and the listing says what each command's own help says."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest
import typer

import reconciler.cli
from reconciler.cli import COMMANDS, LazyGroup

HEAVY = ("pydantic", "fastapi", "uvicorn", "git", "ruamel", "jsonschema", "httpx", "rich")


def loaded_modules(*argv: str) -> tuple[str, list[str]]:
    """(stdout, modules loaded) of `reconciler ARGV` in a fresh interpreter."""
    code = (
        "import json, sys\n"
        f"sys.argv = ['reconciler', *{list(argv)!r}]\n"
        "from reconciler.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {"COLUMNS": "200", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    *text, modules = done.stdout.rstrip("\n").split("\n")
    return "\n".join(text), json.loads(modules)


def test_help_lists_every_command_and_imports_none_of_them() -> None:
    text, modules = loaded_modules("--help")
    for name in COMMANDS:
        assert f"\n  {name} " in text, name
    mine = [m for m in modules if m.startswith("reconciler.")]
    assert mine == ["reconciler.cli"], mine
    assert not [m for m in modules if m.split(".")[0] in HEAVY]


@pytest.mark.parametrize("command", ["status", "events", "validate", "history"])
def test_a_command_imports_what_it_uses_only(command: str) -> None:
    _, modules = loaded_modules(command, "--help")
    assert f"reconciler.cli.{COMMANDS[command][0]}" in modules
    assert not [m for m in modules if m.split(".")[0] in ("fastapi", "uvicorn", "starlette")]
    assert "reconciler.cli.apply" not in modules and "reconciler.loop.daemon" not in modules


def command_modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.iter_modules(reconciler.cli.__path__) if not info.ispkg
    )


@pytest.mark.parametrize("module", command_modules())
def test_every_command_of_a_module_is_registered_with_its_own_help(module: str) -> None:
    app = getattr(importlib.import_module(f"reconciler.cli.{module}"), "app", None)
    if not isinstance(app, typer.Typer):
        return  # a helper module (options, desired)
    group = typer.main.get_group(app)
    assert group.commands, f"{module} registers no command"
    for name, command in group.commands.items():
        assert COMMANDS.get(name, (None,))[0] == module, f"{name} is not registered to {module}"
        assert COMMANDS[name][1] == command.get_short_help_str(10_000), name


def test_an_unknown_command_is_a_usage_error() -> None:
    group = typer.main.get_command(reconciler.cli.app)
    assert isinstance(group, LazyGroup)
    assert group.get_command(typer.Context(group), "no-such-command") is None

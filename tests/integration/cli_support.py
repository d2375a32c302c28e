"""Run the `reconciler` command as a real process, the way an operator does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m reconciler ARGS` in `cwd`; no input, however broken, may print a traceback."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


PRINTED_PLAN = re.compile(r"```console\n\$ reconciler plan desired-state\n(.*?)```", re.S)


def readme_plan_matches(section: str, cwd: Path, env: dict[str, str]) -> None:
    """The README section's `reconciler plan desired-state` block is what the command prints in
    `cwd` (where the test wrote the section's files), line for line."""
    [shown] = PRINTED_PLAN.findall(section)
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "desired-state"],
        cwd=cwd,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = [line.rstrip() for line in done.stdout.splitlines()]
    assert printed == shown.rstrip("\n").splitlines(), done.stdout

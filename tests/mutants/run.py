"""`make mutants`: deliberate faults in a copy of the package; the tests must catch each (unit
tests for the core, the gateway's integration tests, which run the copy's gateway process in front
of stand-in engines, for the gateway).

For each mutant in mutants.py: the working tree (tracked and untracked files that git does not
ignore) is copied to a temporary directory once, the mutant's snippet is replaced in its file
there, and the mutant's tests run against that copy (PYTHONPATH and the working directory
point at it; the check below makes sure the copy, not the installed package, is imported). The
tests must fail: the mutant is then killed. A mutant whose snippet is not in its file exactly
once is "not applied", which is a failure too (the code moved: the mutant must follow it), and so
is a mutant that breaks the import or collection (that tests nothing).

Before any mutant, the same tests run on the unmutated copy and must pass.

    .venv/bin/python tests/mutants/run.py [NAME_SUBSTRING ...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mutants import MUTANTS, Mutant

REPO = Path(__file__).resolve().parents[2]
# a fixed hypothesis seed: a mutant is killed or not the same way on every run
PYTEST_ARGS = (
    "-x",
    "-q",
    "-p",
    "no:cacheprovider",
    "--no-header",
    "-o",
    "addopts=",
    "--hypothesis-seed=0",
)
TIMEOUT_S = 900


def tree_files() -> list[str]:
    """The working tree as git sees it: tracked files and untracked ones it does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


def copy_tree(target: Path) -> None:
    for name in tree_files():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)


def environment(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_isolated(copy: Path) -> None:
    """The copy's package is the one imported (not the editable install of the checkout)."""
    done = subprocess.run(
        [sys.executable, "-c", "import reconciler; print(reconciler.__file__)"],
        cwd=copy,
        env=environment(copy),
        capture_output=True,
        text=True,
        check=True,
    )
    imported = Path(done.stdout.strip()).resolve()
    if copy.resolve() not in imported.parents:
        sys.exit(f"mutants: the copy is not what gets imported ({imported}); nothing was checked")


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    pytest = Path(sys.executable).with_name("pytest")
    try:
        done = subprocess.run(
            [str(pytest), *PYTEST_ARGS, *tests],
            cwd=copy,
            env=environment(copy),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_S}s"
    return done.returncode, done.stdout + done.stderr


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return "(no failing test named)"


def try_mutant(copy: Path, mutant: Mutant) -> tuple[str, str]:
    """(outcome, detail): outcome is killed, SURVIVED, NOT APPLIED or BROKEN."""
    path = copy / mutant.path
    if not path.is_file():
        return "NOT APPLIED", f"{mutant.path} does not exist"
    original = path.read_text(encoding="utf-8")
    found = original.count(mutant.find)
    if found != 1:
        return "NOT APPLIED", f"snippet found {found} times in {mutant.path}"
    path.write_text(original.replace(mutant.find, mutant.replace), encoding="utf-8")
    try:
        code, output = run_tests(copy, mutant.tests)
    finally:
        path.write_text(original, encoding="utf-8")
    if code == 1:
        return "killed", first_failure(output)
    if code == 0:
        return "SURVIVED", "every test passed"
    tail = " | ".join(output.strip().splitlines()[-3:])
    return "BROKEN", f"pytest exit {code} (not a test failure): {tail}"


def main(argv: list[str]) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress as it goes
    chosen = [m for m in MUTANTS if not argv or any(a in m.name for a in argv)]
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reconciler-mutants-") as tmp:
        copy = Path(tmp)
        copy_tree(copy)
        check_isolated(copy)
        suites = sorted({t for m in chosen for t in m.tests})
        code, output = run_tests(copy, tuple(suites))
        if code != 0:
            print(output[-4000:])
            print(f"mutants: the unmutated copy fails its tests (exit {code}); nothing to measure")
            return 2
        print(f"baseline: {len(suites)} test files pass on the unmutated copy")
        outcomes: list[str] = []
        for number, mutant in enumerate(chosen, start=1):
            started = time.monotonic()
            outcome, detail = try_mutant(copy, mutant)
            outcomes.append(outcome)
            took = time.monotonic() - started
            print(f"{number:2}. [{outcome}] {mutant.name}  ({mutant.path}, {took:.0f}s)")
            print(f"      {detail}")
    killed = outcomes.count("killed")
    print(
        f"mutants: {killed} of {len(chosen)} killed "
        f"({len(chosen) - killed} not: {', '.join(sorted(set(outcomes) - {'killed'})) or '-'}) "
        f"in {time.monotonic() - began:.0f}s"
    )
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

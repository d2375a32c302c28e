"""What the suite needs from the machine, and one way to say that something is missing.

Every test that needs a component this repository does not install by itself (dockerd, busybox,
promtool, Chromium, kubectl...) asks for it here. On a developer's bare machine a missing component
skips the test with a reason that says how to install it; with RECONCILER_TEST_STRICT=1 (CI) it
fails the test instead, so that CI cannot pass by skipping. tests/conftest.py prints one line
summing up what was skipped and why.

Randomised tests take their seed from `random_seed()` (or the `seed` fixture of conftest.py):
RECONCILER_TEST_SEED when set, else a fresh one; the seed is printed so that a failure can be
replayed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import shutil
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

STRICT_ENV = "RECONCILER_TEST_STRICT"
SEED_ENV = "RECONCILER_TEST_SEED"
MISSING = "missing component"
"""the prefix of every skip reason written here (the summary groups skips by it)"""


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def missing(component: str, how_to_install: str, *, module_level: bool = False) -> NoReturn:
    """Skip (or, in strict mode, fail) because `component` is not on this machine."""
    if strict():
        pytest.fail(
            f"{STRICT_ENV}=1 and {component} is missing; install it: {how_to_install}",
            pytrace=False,
        )
    pytest.skip(f"{MISSING} {component}: {how_to_install}", allow_module_level=module_level)


def require(
    component: str, how_to_install: str, present: bool, *, module_level: bool = False
) -> None:
    """Go on when `present`, else `missing()`."""
    if not present:
        missing(component, how_to_install, module_level=module_level)


def require_executable(name: str, how_to_install: str, *, module_level: bool = False) -> str:
    """The path of executable `name` on PATH."""
    path = shutil.which(name)
    if path is None:
        missing(name, how_to_install, module_level=module_level)
    return path


def require_file(path: Path | str, how_to_install: str, *, module_level: bool = False) -> Path:
    path = Path(path)
    require(str(path), how_to_install, path.exists(), module_level=module_level)
    return path


def require_module(name: str, how_to_install: str, *, module_level: bool = False) -> ModuleType:
    """Import `name` (like pytest.importorskip, but strict-aware)."""
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        missing(f"Python module {name}", how_to_install, module_level=module_level)
    return importlib.import_module(name)


def needs(component: str, how_to_install: str, present: bool) -> pytest.MarkDecorator:
    """A decorator for tests that need `component`; checked when the test is set up."""
    return pytest.mark.component(component, how_to_install, present)


def random_seed(label: str = "") -> int:
    """RECONCILER_TEST_SEED, or a fresh seed; printed (pytest shows it with a failure)."""
    raw = os.environ.get(SEED_ENV)
    seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    where = f" ({label})" if label else ""
    print(f"seed {seed}{where}: {SEED_ENV}={seed} replays it")
    return seed

"""Desired state for a command: reading and validating it (from the working tree, git's index or a
revision), and printing its problems (text for people, or GitHub Actions annotations).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from rich.text import Text

from reconciler.cli.options import out, usage_error
from reconciler.core.desired import Problem, RawDesiredState, ValidationResult
from reconciler.core.spec_checks import validate
from reconciler.engines.registry import catalog, missing_message
from reconciler.source.load import LoadError, load_directory, load_revision, load_staged


class Format(StrEnum):
    text = "text"
    json = "json"
    github = "github"


def print_problems(problems: list[Problem], fmt: Format) -> None:
    if fmt is Format.github:
        for p in problems:
            kind = "error" if p.is_error else "warning"
            title = f",title={_gh_property(p.field)}" if p.field else ""
            where = f"file={_gh_property(p.file)},line={p.line}"
            out.print(f"::{kind} {where}{title}::{_gh_data(p.message)}", markup=False)
        return
    # a pull request's CI, where no model file exists, prints a warning per spec: there (no
    # terminal, no colour) printable ASCII is written as it is, the bytes rich would write, for
    # a twentieth of rich's rendering time; anything else takes rich, in one print for them all
    if not out.is_terminal:
        plain = "".join(f"{p.location()}: {_after_location(p)}\n" for p in problems)
        if _ONLY_PRINTABLE_ASCII.fullmatch(plain):
            out.file.write(plain)
            return
    text = problems_text(problems)
    if text:
        out.print(text, end="")


_ONLY_PRINTABLE_ASCII = re.compile("[\x20-\x7e\n]*")


def problems_text(problems: list[Problem]) -> Text:
    """The problems as rich prints them: the location in red (error) or yellow (warning)."""
    text = Text()
    for p in problems:
        text.append(p.location(), style="red" if p.is_error else "yellow")
        text.append(f": {_after_location(p)}\n")
    return text


def _after_location(p: Problem) -> str:
    return f"{p.severity}: {p.field}: {p.message}" if p.field else f"{p.severity}: {p.message}"


def _gh_data(text: str) -> str:
    """Escape a workflow command's message (GitHub Actions' escaping rules)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def read_desired(directory: Path, rev: str | None, staged: bool = False) -> RawDesiredState:
    """Load from the working tree, a revision or the index; a bad location is exit 2."""
    try:
        if staged:
            return load_staged(directory)
        return load_revision(directory, rev) if rev else load_directory(directory)
    except LoadError as exc:
        raise usage_error(str(exc)) from exc


def validate_here(raw: RawDesiredState, *, check_paths: bool = True) -> ValidationResult:
    """Validate with this host's checks: engine parameters, and model files present."""
    path_check = missing_message if check_paths else None
    return validate(raw, path_check=path_check, catalog=catalog())

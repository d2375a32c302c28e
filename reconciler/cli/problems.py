"""Printing validation problems: as text for people, or as GitHub Actions annotations."""

from __future__ import annotations

from enum import StrEnum

from rich.text import Text

from reconciler.core.problems import Problem

from .options import out


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
    for p in problems:
        style = "red" if p.is_error else "yellow"
        out.print(Text(p.location(), style=style), end="")
        out.print(f": {p.severity}: ", end="", markup=False)
        out.print(f"{p.field}: {p.message}" if p.field else p.message, markup=False)


def _gh_data(text: str) -> str:
    """Escape a workflow command's message (GitHub Actions' escaping rules)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")

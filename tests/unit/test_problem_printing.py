"""`validate`'s problems printed without a terminal: the same bytes rich writes, whichever way
they are written (printable ASCII directly, anything else through rich)."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from reconciler.cli import loading
from reconciler.cli.loading import Format, print_problems, problems_text
from reconciler.core.desired import Problem

WORDS = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.text(max_size=20),  # tabs, control characters, non-ASCII: rich's path
)
PROBLEMS = st.lists(
    st.builds(
        Problem,
        file=WORDS,
        line=st.integers(1, 10_000),
        field=st.one_of(st.just(""), WORDS),
        message=WORDS,
        severity=st.sampled_from(["error", "warning"]),
    ),
    max_size=8,
)


def as_rich_writes(problems: list[Problem]) -> str:
    """The oracle: rich itself, configured as the CLI's console, writing to a non-terminal."""
    buffer = io.StringIO()
    console = Console(file=buffer, highlight=False, soft_wrap=True)
    text = problems_text(problems)
    if text:
        console.print(text, end="")
    return buffer.getvalue()


@given(PROBLEMS)
def test_printed_problems_are_what_rich_would_write(problems: list[Problem]) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, highlight=False, soft_wrap=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading, "out", console)
        print_problems(problems, Format.text)
    assert buffer.getvalue() == as_rich_writes(problems)


def test_a_ci_warning_is_one_plain_line() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, highlight=False, soft_wrap=True)
    problem = Problem(
        "models/a.yaml", 7, "model_path", "/m.gguf does not exist on this host", "warning"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading, "out", console)
        print_problems([problem, problem], Format.text)
    line = "models/a.yaml:7: warning: model_path: /m.gguf does not exist on this host\n"
    assert buffer.getvalue() == line * 2

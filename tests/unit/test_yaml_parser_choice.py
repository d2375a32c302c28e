"""Which parser reads a spec file: libyaml only where it reads the text as YAML 1.2 does.

The oracle is the rule as first written, one alternation over the whole text; read_alike splits
it for speed and must decide every text the same way.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.source.yamldoc import parse_document, read_alike

ONE_PATTERN = re.compile(
    "[\\x00-\\x08\\t\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f\\u2028\\u2029\\ufeff]"
    "|[&*][^\\s,\\[\\]{}]*:|[|>][-+0-9]*#"
)

# the characters the rule is about, often enough to meet each other
PIECES = st.sampled_from(
    [
        *("&", "*", ":", "|", ">", "#", "-", "+", "7", " ", ",", "[", "]", "{", "}", "\n", "\t"),
        *("\x07", "\x85", "\u2028", "\ufeff", "a", "key: ", "é", "\x7f"),
    ]
)
TEXTS = st.one_of(st.lists(PIECES, max_size=30).map("".join), st.text(max_size=60))


@settings(max_examples=3000)
@given(TEXTS)
def test_read_alike_decides_as_the_one_pattern(text: str) -> None:
    assert read_alike(text) == (ONE_PATTERN.search(text) is None)


def test_texts_libyaml_would_read_otherwise_still_parse_as_yaml_1_2() -> None:
    # an anchor holding a colon is YAML 1.2 only (libyaml would end the anchor at the colon)
    assert not read_alike("a: &x:y 1\nb: *x:y\n")
    doc, problem = parse_document("m.yaml", "a: &x:y 1\nb: *x:y\n")
    assert problem is None and doc is not None and doc.data == {"a": 1, "b": 1}
    assert not read_alike("a: |#\n  x\n") and read_alike("a: |\n  x # y\n")

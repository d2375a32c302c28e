"""One YAML text -> one raw document: plain values plus the line of every field.

libyaml (PyYAML's C parser) produces the events when it is installed: several times faster than
ruamel's pure-Python scanner, and the events carry the same line marks. Any input libyaml
rejects, or that turns out unusable, is parsed again by ruamel, so that every problem is
reported with ruamel's message and line whichever parser read the good files.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml import events as ruamel_events
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.resolver import Resolver

from reconciler.core.desired import FieldPath, PlainValue, Problem, SourceDoc

try:  # PyYAML built with libyaml; without it every file takes the ruamel path
    import yaml as _pyyaml
    from yaml._yaml import CParser as _CParser

    _LIBYAML = True
except ImportError:  # pragma: no cover - PyYAML without its C extension
    _LIBYAML = False

# Specs are a few levels deep; a limit keeps hostile input (deep nesting, alias bombs) from
# exhausting the stack or the memory of everything that reads the data afterwards.
MAX_DEPTH = 32
MAX_NODES = 100_000

_CORE = "tag:yaml.org,2002:"
_RESOLVER = Resolver()  # YAML 1.2 core: what editors (yaml-language-server) also assume


class _Unusable(Exception):
    """A document that parses as YAML but cannot be a spec (or hits a limit)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _yaml() -> YAML:
    # Only the event parser (no comment handling, no composer): markedly faster than round-trip
    # loading, and iterative, so deep nesting cannot overflow the stack. _build makes the values.
    return YAML(typ="safe", pure=True)


# Where YAML 1.1 (libyaml) and 1.2 (ruamel) read the same text differently: line breaks, BOM,
# control characters and tabs; anchors or aliases holding a colon (allowed by 1.2 only); a
# block scalar header touching a comment (`|#`). A text holding any of them takes ruamel's path.
# Three patterns, each searched only when its first character is in the text: one alternation
# tried at every position took as long as a third of libyaml's parse.
_CONTROL = re.compile("[\\x00-\\x08\\t\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f\\u2028\\u2029\\ufeff]")
_COLON_IN_ANCHOR = re.compile("[&*][^\\s,\\[\\]{}]*:")
_HEADER_COMMENT = re.compile("[|>][-+0-9]*#")


def read_alike(text: str) -> bool:
    """Whether libyaml reads `text` as ruamel (YAML 1.2) does: nothing of the list above."""
    if _CONTROL.search(text) is not None:
        return False
    if ("&" in text or "*" in text) and _COLON_IN_ANCHOR.search(text) is not None:
        return False
    return not (("|" in text or ">" in text) and _HEADER_COMMENT.search(text) is not None)


def parse_document(file: str, text: str) -> tuple[SourceDoc | None, Problem | None]:
    """Parse one YAML text; return the document, or the problem that makes it unusable."""
    if _LIBYAML and read_alike(text):
        parser = _CParser(text)
        try:
            # iter(callable, sentinel) runs in C: a generator's frame per event cost ~15 % here
            data, lines = _build(iter(parser.get_event, None))
        except Exception:  # any rejection is reported by the ruamel path below
            pass
        else:
            if isinstance(data, dict):  # anything else is a problem: ruamel's words for it
                return SourceDoc(file, data, lines), None
        finally:
            parser.dispose()
    return _parse_with_ruamel(file, text)


def _parse_with_ruamel(file: str, text: str) -> tuple[SourceDoc | None, Problem | None]:
    try:
        data, lines = _build(_yaml().parse(text))
    except _Unusable as exc:
        return None, Problem(file, exc.line, "", f"YAML error: {exc.message}")
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = exc.problem or str(exc).splitlines()[0]
        return None, Problem(file, line, "", f"YAML error: {message}")
    except ReaderError as exc:  # a character YAML does not allow: locate it
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        return None, Problem(file, line, "", f"YAML error: {str(exc).splitlines()[0]}")
    except (YAMLError, ValueError, UnicodeError) as exc:
        return None, Problem(file, 1, "", f"YAML error: {str(exc).splitlines()[0]}")
    return _document(file, data, lines)


def _document(
    file: str, data: PlainValue, lines: dict[FieldPath, int]
) -> tuple[SourceDoc | None, Problem | None]:
    if data is None:
        return None, Problem(file, 1, "", "file is empty: expected a mapping of fields")
    if not isinstance(data, dict):
        return None, Problem(file, 1, "", f"expected a mapping of fields, found {_kind(data)}")
    return SourceDoc(file, data, lines), None


def _kind(value: PlainValue) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


@dataclass
class _Frame:
    path: FieldPath
    value: dict[str, PlainValue] | list[PlainValue]
    anchor: str | None
    line: int
    size: int = 1
    key: str | None = None  # a mapping's key waiting for its value
    key_line: int = 0
    key_is_merge: bool = False
    merges: list[tuple[PlainValue, int]] = field(default_factory=list)


_SCALAR, _OPEN_MAP, _OPEN_SEQ, _CLOSE, _ALIAS, _DOCUMENT = range(6)
_KINDS: dict[type, int] = {
    ruamel_events.ScalarEvent: _SCALAR,
    ruamel_events.MappingStartEvent: _OPEN_MAP,
    ruamel_events.SequenceStartEvent: _OPEN_SEQ,
    ruamel_events.MappingEndEvent: _CLOSE,
    ruamel_events.SequenceEndEvent: _CLOSE,
    ruamel_events.AliasEvent: _ALIAS,
    ruamel_events.DocumentStartEvent: _DOCUMENT,
}
if _LIBYAML:
    _KINDS.update(
        {
            _pyyaml.ScalarEvent: _SCALAR,
            _pyyaml.MappingStartEvent: _OPEN_MAP,
            _pyyaml.SequenceStartEvent: _OPEN_SEQ,
            _pyyaml.MappingEndEvent: _CLOSE,
            _pyyaml.SequenceEndEvent: _CLOSE,
            _pyyaml.AliasEvent: _ALIAS,
            _pyyaml.DocumentStartEvent: _DOCUMENT,
        }
    )


def _build(events: Iterable[Any]) -> tuple[PlainValue, dict[FieldPath, int]]:
    """Plain values (dict, list, str, int, float, bool, None) and the line of every field.

    Keys are always strings, spelled as written (`1:` is the key "1"). Aliases share the
    anchored value; `<<` merge keys are honoured, explicit keys win over merged ones.
    """
    lines: dict[FieldPath, int] = {(): 1}
    stack: list[_Frame] = []
    anchors: dict[str, tuple[PlainValue, int, str | None]] = {}  # value, node count, its text
    root: PlainValue = None
    documents = 0
    nodes = 0

    def attach(value: PlainValue, size: int, line: int, text: str | None, merge: bool) -> None:
        nonlocal root, nodes
        nodes += size
        if nodes > MAX_NODES:
            raise _Unusable(line, f"more than {MAX_NODES} values (after expanding aliases)")
        if not stack:
            root = value
            return
        top = stack[-1]
        top.size += size
        if isinstance(top.value, list):
            lines[(*top.path, len(top.value))] = line
            top.value.append(value)
        elif top.key is None:
            if text is None:
                raise _Unusable(line, "a key must be a plain value, not a list or a mapping")
            if text in top.value and not merge:
                first = lines[(*top.path, text)]
                raise _Unusable(line, f"duplicate key '{text}' (first on line {first})")
            top.key, top.key_line, top.key_is_merge = text, line, merge
            if not merge:
                lines[(*top.path, text)] = line
        else:
            if top.key_is_merge:
                top.merges.append((value, top.key_line))
            else:
                top.value[top.key] = value
            top.key = None

    def child_path() -> FieldPath:
        if not stack:
            return ()
        top = stack[-1]
        if isinstance(top.value, list):
            return (*top.path, len(top.value))
        if top.key is None:
            return (*top.path, "?")  # a complex key: rejected when it ends
        return (*top.path, top.key)

    for event in events:
        kind = _KINDS.get(type(event))
        line = event.start_mark.line + 1
        if kind == _SCALAR:
            text = event.value
            if event.tag is None and event.implicit[0] and len(text) <= _CACHED_LENGTH:
                value, merge = _plain_cached(text)  # most scalars: _scalar's first case inline
            else:
                value, merge = _scalar(event, line)
            if event.anchor:
                anchors[event.anchor] = (value, 1, text)
            attach(value, 1, line, text, merge)
        elif kind in (_OPEN_MAP, _OPEN_SEQ):
            if len(stack) >= MAX_DEPTH:
                raise _Unusable(line, f"nested more than {MAX_DEPTH} levels deep")
            expected = "map" if kind == _OPEN_MAP else "seq"
            if event.tag not in (None, "!", _CORE + expected):
                raise _Unusable(line, f"unsupported tag '{_short(event.tag)}'")
            container: dict[str, PlainValue] | list[PlainValue] = {} if kind == _OPEN_MAP else []
            stack.append(_Frame(child_path(), container, event.anchor, line))
        elif kind == _CLOSE:
            frame = stack.pop()
            if isinstance(frame.value, dict):
                _merge(frame, lines)
            if frame.anchor:
                anchors[frame.anchor] = (frame.value, frame.size, None)
            attach(frame.value, frame.size, frame.line, None, False)
        elif kind == _ALIAS:
            if event.anchor not in anchors:
                raise _Unusable(line, f"found undefined alias '{event.anchor}'")
            value, size, text = anchors[event.anchor]
            attach(value, size, line, text, False)
        elif kind == _DOCUMENT:
            documents += 1
            if documents > 1:
                raise _Unusable(line, "a second document (---): a spec file holds one document")
    return root, lines


def _merge(frame: _Frame, lines: dict[FieldPath, int]) -> None:
    mapping = frame.value
    assert isinstance(mapping, dict)
    for source, line in frame.merges:
        sources = source if isinstance(source, list) else [source]
        for item in sources:
            if not isinstance(item, dict):
                raise _Unusable(line, "'<<' merges a mapping or a list of mappings")
            for key, value in item.items():
                if key not in mapping:
                    mapping[key] = value
                    lines[(*frame.path, key)] = line


_BOOLS = {"true": True, "false": False}


def _scalar(event: Any, line: int) -> tuple[PlainValue, bool]:
    """The value of a scalar (YAML 1.2 core schema) and whether it is a `<<` merge key."""
    text: str = event.value
    tag = event.tag
    if tag is None:
        if not event.implicit[0]:  # quoted
            return text, False
        return _plain_cached(text) if len(text) <= _CACHED_LENGTH else _plain(text)
    if tag == "!":
        return text, False
    return _scalar_as(tag, text, line)


_CACHED_LENGTH = 64
"""Keys and short values repeat across files (`framework`, `true`, `4096`): resolve them once."""


def _plain(text: str) -> tuple[PlainValue, bool]:
    """An untagged, unquoted scalar: the YAML 1.2 core schema decides what it is."""
    tag = str(_RESOLVER.resolve(ScalarNode, text, (True, False)))
    with contextlib.suppress(ValueError, KeyError, _Unusable):
        return _scalar_as(tag, text, 0)
    return text, False  # looked like a number but is not one (`_`, `0x_`): text


_plain_cached = functools.lru_cache(maxsize=4096)(_plain)


def _scalar_as(tag: str, text: str, line: int) -> tuple[PlainValue, bool]:
    try:
        if tag == _CORE + "str" or tag == _CORE + "timestamp":  # dates stay text, as in JSON
            return text, False
        if tag == _CORE + "int":
            return _int(text), False
        if tag == _CORE + "float":
            return _float(text), False
        if tag == _CORE + "bool":
            return _BOOLS[text.lower()], False
        if tag == _CORE + "null":
            if text not in ("", "~", "null", "Null", "NULL"):
                raise ValueError(text)
            return None, False
        if tag == _CORE + "merge":
            return text, True
    except (ValueError, KeyError) as exc:
        raise _Unusable(line, f"'{text}' is not a valid {_short(tag)}") from exc
    raise _Unusable(line, f"unsupported tag '{_short(tag)}'")


def _int(text: str) -> int:
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    for prefix, base in (("0b", 2), ("0o", 8), ("0x", 16)):
        if digits.startswith(prefix):
            return sign * int(digits[2:], base)
    return sign * int(digits)


def _float(text: str) -> float:
    digits = text.replace("_", "").lower()
    if digits.lstrip("+-") in (".inf", ".nan"):
        digits = digits.replace(".", "")
    return float(digits)


def _short(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag

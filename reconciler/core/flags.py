"""Spec parameters as command-line words: the engine-neutral rendering. Pure data and functions.

Which keys an engine accepts, and how it spells switches and lists, belong to the engine's own
module (reconciler/engines/*): each one describes its style with a `FlagStyle` and calls
`render_flags`. Rules shared by every engine:

- `key: value` becomes `--key value`; `true` becomes `--key` for a switch (`false`: omitted, or
  `--no-key` where the engine's default is on); a list repeats the flag, unless the style makes
  it one comma-joined value or one flag followed by every value.
- A spec never adds a flag through a value: a string value (or list item) that starts with `-`,
  or holds a NUL or a line break, is refused with `FlagValueError`. Numbers are rendered from
  numbers, so `n-gpu-layers: -1` stays a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Scalar = str | int | float | bool
Value = Scalar | list[Scalar]

_FORBIDDEN_CHARACTERS = ("\x00", "\n", "\r")


class FlagValueError(ValueError):
    """A parameter value that could become a flag of its own or break the argv."""


@dataclass(frozen=True)
class FlagStyle:
    """How one engine spells its flags; every set holds keys without the leading `--`."""

    switches: frozenset[str] = frozenset()
    """`true` -> `--key`, `false` -> omitted"""
    negatable: frozenset[str] = frozenset()
    """switches on by default: `false` -> `--no-key`"""
    on_off: frozenset[str] = frozenset()
    """flags that take `on`/`off` (true/false are rendered so)"""
    comma_lists: frozenset[str] = frozenset()
    """a list is one comma-joined value"""
    multi_value: frozenset[str] = frozenset()
    """nargs="+": a list is one flag followed by every value"""
    sort_keys: bool = True
    """key order: sorted (a stable command), or as the spec writes them"""
    bool_switches: bool = False
    """every boolean (list items too) is a switch: a container defines its own arguments"""


def safe_word(key: str, value: Scalar) -> str:
    """The argv word of one value; FlagValueError when it could start a flag or break argv."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if isinstance(value, str):
        if text.startswith("-"):
            raise FlagValueError(
                f"parameter {key}: value {text!r} starts with '-' and would be read as a flag"
            )
        if any(c in text for c in _FORBIDDEN_CHARACTERS):
            raise FlagValueError(f"parameter {key}: value {text!r} holds a NUL or a line break")
    return text


def check_value(key: str, value: Value) -> None:
    """FlagValueError when a value (or any list item) could start a flag or break argv."""
    for item in value if isinstance(value, list) else [value]:
        safe_word(key, item)


def render_flags(parameters: Mapping[str, Value], style: FlagStyle = FlagStyle()) -> list[str]:
    """Pure: the spec's parameters as argv words in `style` (FlagValueError on a bad value)."""
    keys: Iterable[str] = sorted(parameters) if style.sort_keys else parameters
    args: list[str] = []
    for key in keys:
        args += _flag(key, parameters[key], style)
    return args


def _flag(key: str, value: Value, style: FlagStyle) -> list[str]:
    flag = f"--{key}"
    if key in style.on_off:
        if isinstance(value, bool):
            return [flag, "on" if value else "off"]
        return [flag, safe_word(key, _scalar(key, value))]
    if style.bool_switches:
        items = value if isinstance(value, list) else [value]
        return [w for item in items for w in _switch_or_value(flag, key, item)]
    if isinstance(value, bool) and key in style.switches:
        if value:
            return [flag]
        return [f"--no-{key}"] if key in style.negatable else []
    if isinstance(value, list):
        words = [safe_word(key, v) for v in value]
        if key in style.comma_lists:
            return [flag, ",".join(words)]
        if key in style.multi_value:
            return [flag, *words]
        return [part for word in words for part in (flag, word)]
    return [flag, safe_word(key, value)]


def _switch_or_value(flag: str, key: str, item: Scalar) -> list[str]:
    if isinstance(item, bool):
        return [flag] if item else []
    return [flag, safe_word(key, item)]


def _scalar(key: str, value: Value) -> Scalar:
    if isinstance(value, list):
        raise FlagValueError(f"parameter {key} takes one value, not a list")
    return value

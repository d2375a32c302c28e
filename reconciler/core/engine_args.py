"""What of a spec reaches what serves it: the framework rules the engine registry hands the core,
spec parameters rendered as command-line words, the checks of hostile input, and what separates
a remote model from an engine. Pure.

A remote model (framework remote) is an endpoint someone else serves: the fields that shape an
engine (files, image, flags, GPUs, port, environment, replicas, on-demand activation) mean
nothing for it, and the fields that describe an endpoint mean nothing for an engine. Either
mistake would be silently ignored, so validation refuses each offending field where it is
written; and an overflow must go to another model that exists.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from reconciler.core.desired import FieldPath
from reconciler.core.spec import ModelSpec


@dataclass(frozen=True)
class FrameworkRules:
    """One framework as validation sees it."""

    name: str
    parameters: frozenset[str] | None
    """Known engine flags (without the leading --); None = not checked (e.g. docker)."""
    reserved_env: frozenset[str] = frozenset()
    """Environment names the engine reads as its listen address or port: a spec may not set them."""
    needs_image: bool = False
    """docker: the spec must name an image."""
    remote: bool = False
    """An endpoint, not an engine: the spec names `endpoint`, and no engine-only field."""


Catalog = Mapping[str, FrameworkRules]
"""framework name -> its rules, for every framework the registry lists."""


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


INT64 = (-(2**63), 2**63 - 1)  # what engines (C++ int64_t, Rust i64) parse; Python has no limit
MAX_ARG_BYTES = 65536  # per string reaching argv/env (Linux refuses one over 128 KiB: E2BIG)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FLAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # no '=', space or leading '-'
NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # "-1" cannot be taken for a flag
# Every process engine reads its address and port from these (llama-cpp-python's settings,
# case-insensitively), whatever its rules add: the host decides where engines listen.
LISTEN_ENV_FLOOR = frozenset({"HOST", "PORT"})
# The host's settings, its secrets and the markers that say whose engine a process is: an engine
# never gets one of these from a spec (nor from the host's environment: engines/identity.py).
HOST_PREFIX = "RECONCILER_"
HOST_ONLY = "RECONCILER_* variables are the host's (its settings, secrets, engine markers)"
# Single-line strings take no control character; values may hold tab and line breaks (a
# multi-line chat template); NUL and the rest (escapes that rewrite a terminal) never.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def engine_input_problems(
    spec: ModelSpec, rules: FrameworkRules
) -> Iterator[tuple[FieldPath, str]]:
    """What would reach the engine's argv or environment and must not: each with its field."""
    yield from _text(("model_path",), spec.model_path, CONTROL)
    if spec.model_path.startswith("-"):
        yield ("model_path",), "model_path cannot start with '-': the engine would read a flag"
    if spec.image is not None:
        yield from _text(("image",), spec.image, CONTROL)
    for key, value in spec.parameters.items():
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            path: FieldPath = (
                ("parameters", key, i) if isinstance(value, list) else ("parameters", key)
            )
            if not isinstance(item, str):
                continue
            yield from _text(path, item, CONTROL_IN_TEXT)
            if item.startswith("-") and not NUMBER.fullmatch(item):
                yield path, f"value {_short(item)} starts with '-': a value cannot start a new flag"
    reserved = rules.reserved_env | (frozenset() if rules.needs_image else LISTEN_ENV_FLOOR)
    reserved_upper = {name.upper() for name in reserved}
    for name, value in spec.env.items():
        if not ENV_NAME.fullmatch(name):  # the schema's `$` lets a final newline through
            yield ("env", name), not_env_name(name)
        elif name.upper() in reserved_upper:
            why = "where engines listen is the host's setting and the port the planner's"
            yield (
                ("env", name),
                f"{spec.framework} reads '{name}' as its listen address or port: {why}",
            )
        elif name.upper().startswith(HOST_PREFIX):
            yield ("env", name), f"'{name}': {HOST_ONLY}"
        yield from _text(("env", name), value, CONTROL_IN_TEXT)


def _text(
    path: FieldPath, value: str, forbidden: re.Pattern[str]
) -> Iterator[tuple[FieldPath, str]]:
    found = forbidden.search(value)
    if found:
        char = found.group()
        what = "a NUL character" if char == "\x00" else f"the control character {char!r}"
        yield path, f"contains {what}: it cannot reach an engine's arguments or environment"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ARG_BYTES:
        yield path, f"is {size} bytes long; at most {MAX_ARG_BYTES} reach an engine"


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def unusable_values(data: object) -> Iterator[tuple[FieldPath, str]]:
    """Numbers no engine or tool parses, and NUL anywhere in a document, with their fields.

    Run before the schema: its messages repr a value, and the repr of an int of more than
    4300 digits raises.
    """
    for path, value in _leaves(data, ()):
        message = None
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
            message = f"{_integer(value)} is out of range: engines parse {INT64[0]}..{INT64[1]}"
        elif isinstance(value, float) and not math.isfinite(value):
            message = f"{value} is not a finite number"
        elif isinstance(value, str) and "\x00" in value:
            message = "contains a NUL character"
        if message:
            yield path, message


def _integer(value: int) -> str:
    if value.bit_length() <= 256:
        return str(value)
    # str() of an int over 4300 digits raises, and a page of digits helps nobody
    digits = int(value.bit_length() * 0.30103) + 1  # log10(2)
    return f"an integer of about {digits} digits"


def _leaves(value: object, path: FieldPath) -> Iterator[tuple[FieldPath, object]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                yield (*path, key), key
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, (*path, i))
    else:
        yield path, value


def not_env_name(name: str) -> str:
    return (
        f"{name!r} is not an environment variable name "
        "(letters, digits and '_', not starting with a digit)"
    )


REMOTE_ONLY = ("endpoint", "upstream_model", "api_key_env", "max_concurrency")
"""Fields that describe an endpoint: refused on an engine."""

ENGINE_ONLY = (
    "model_path",
    "image",
    "parameters",
    "gpu_devices",
    "resource_requirements",
    "port",
    "env",
    "replicas",
    "activation",
    "idle_timeout_s",
    "overflow",
)
"""Fields that shape or place an engine (or, overflow, relieve its queue): refused on a remote
model when they differ from their defaults (`replicas: 1` and `activation: always` say
nothing a remote model contradicts)."""

_WHY_NOT_REMOTE = {
    "replicas": "an endpoint is one instance; its provider scales it",
    "activation": "an endpoint is not started on demand",
    "overflow": "overflow relieves a local engine's queue; a remote model has max_concurrency",
}


def kind_problems(spec: ModelSpec, rules: FrameworkRules) -> Iterator[tuple[FieldPath, str]]:
    """One problem per field that does not belong to the spec's kind (endpoint or engine)."""
    if rules.remote:
        yield from _remote_problems(spec)
        return
    for name in REMOTE_ONLY:
        if getattr(spec, name) is not None:
            yield (name,), f"{name} is for framework remote only, not {spec.framework}"


def _remote_problems(spec: ModelSpec) -> Iterator[tuple[FieldPath, str]]:
    if spec.endpoint is None:
        yield ("endpoint",), "framework remote needs an endpoint (its OpenAI-compatible base URL)"
    else:
        reason = endpoint_problem(spec.endpoint)
        if reason is not None:
            yield ("endpoint",), reason
    for name in ENGINE_ONLY:
        if getattr(spec, name) != _default(name):
            why = _WHY_NOT_REMOTE.get(name, "a remote model has no engine, files, GPU or port")
            yield (name,), f"{name} does not apply to framework remote: {why}"


def _default(name: str) -> object:
    return ModelSpec.model_fields[name].get_default(call_default_factory=True)


def endpoint_problem(url: str) -> str | None:
    """Why `url` cannot be a remote model's base URL, or None (the schema checked its shape)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port that is not a number, a broken IPv6 address
        return f"endpoint {url!r} is not a URL: {exc}"
    if not parts.hostname:
        return f"endpoint {url!r} names no host"
    if port == 0:
        return f"endpoint {url!r}: port 0 cannot be reached"
    return None


def endpoint_host(url: str) -> str:
    """The host name an endpoint's requests (and its key) go to, as the key's _HOSTS names it."""
    return (urlsplit(url).hostname or "").rstrip(".")


def overflow_problems(spec: ModelSpec, named: Collection[str]) -> Iterator[str]:
    """Why the spec's overflow target cannot take its requests (file:line is the caller's). A
    disabled target is not refused: the gateway then queues as if there were no overflow."""
    if spec.overflow is None:
        return
    target = spec.overflow.model
    if target == spec.id:
        yield "a model cannot overflow to itself"
    elif target not in named:
        yield f"overflow model '{target}' is not a model in desired-state"

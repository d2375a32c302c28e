"""Validate raw desired state: JSON Schema per file, then checks across files. Pure: no I/O.

Every problem carries file:line. The one host-dependent check (does model_path exist here?) is
injected as a callable so that this module stays pure and a pull-request machine can skip it.
What reaches an engine's argv and environment is checked in engine_input (hostile input).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError

from reconciler.core.cluster import (
    ClusterSpec,
    HostFields,
    HostSpec,
    cluster_json_schema,
    host_json_schema,
)
from reconciler.core.desired import (
    DesiredState,
    FieldPath,
    Problem,
    RawDesiredState,
    Severity,
    SourceDoc,
    ValidationResult,
)
from reconciler.core.engine_args import (
    FLAG_NAME,
    Catalog,
    FrameworkRules,
    engine_input_problems,
    kind_problems,
    not_env_name,
    overflow_problems,
    unusable_values,
)
from reconciler.core.fleet import fleet_problems, host_name
from reconciler.core.secrets import CREDENTIAL_FIELDS, not_secret_name
from reconciler.core.serving import alias_problems
from reconciler.core.spec import ModelSpec, model_json_schema

_CREDENTIAL_PATHS = {(name,) for name in CREDENTIAL_FIELDS}
PathCheck = Callable[[ModelSpec], str | None]
"""Returns a warning message when the model's files are not available on this host."""


if TYPE_CHECKING:
    import jsonschema


@cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    # imported here: a clean file never needs it (accepted_strictly), and importing it took
    # ~50 ms of CPU, a sixth of `reconciler validate`'s start-up
    import jsonschema

    schemas = {"model": model_json_schema, "cluster": cluster_json_schema}
    schema = schemas.get(kind, host_json_schema)()
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def validate(
    raw: RawDesiredState,
    *,
    path_check: PathCheck | None = None,
    catalog: Catalog | None = None,
) -> ValidationResult:
    """Validate everything in `raw`; `desired` is None when any error was found.

    `catalog` (engines.registry.catalog()) says what each framework takes. Without it,
    parameters are not checked against engine flags, but every check of hostile input still is.
    """
    known_frameworks = catalog is not None  # else any framework name passes (no registry here)
    if catalog is None:
        catalog = _BARE_CATALOG
    problems = list(raw.problems)
    cluster = ClusterSpec()
    if raw.cluster is not None:
        parsed_cluster = _parse(raw.cluster, "cluster", ClusterSpec, problems)
        if parsed_cluster is not None:
            cluster = parsed_cluster
            problems.extend(_check_cluster(raw.cluster, cluster))
    hosts: dict[str, HostSpec] = {}
    for doc in raw.hosts:  # a fleet: hosts/<name>.yaml, each checked as cluster.yaml's host part
        host = _parse(doc, "host", HostSpec, problems)
        if host is not None:
            problems.extend(_check_cluster(doc, host))
            hosts.setdefault(host_name(doc.file), host)
    specs: list[tuple[SourceDoc, ModelSpec]] = []
    for doc in raw.models:
        spec = _parse(doc, "model", ModelSpec, problems)
        if spec is not None:
            specs.append((doc, spec))
            problems.extend(_check_model(doc, spec, catalog, known_frameworks))
            if path_check is not None:
                try:
                    message = path_check(spec)
                except (OSError, ValueError) as exc:  # e.g. a name too long for this host
                    message = f"cannot check {spec.model_path!r} on this host: {exc}"
                if message:
                    line = doc.line_of(("model_path",))
                    problems.append(Problem(doc.file, line, "model_path", message, "warning"))
    # ids of every file that names one, valid or not, so that a broken file does not also make
    # each fallback to it look unknown
    named = {model_id for d in raw.models if isinstance(model_id := d.data.get("id"), str)}
    problems.extend(_check_across(specs, named, cluster, raw.cluster, fleet=bool(raw.hosts)))
    problems.extend(fleet_problems(raw.hosts, hosts, specs, raw.cluster))
    problems.extend(alias_problems(specs, named))
    problems.sort(key=lambda p: (p.file, p.line, p.severity, p.field, p.message))
    if any(p.is_error for p in problems):
        return ValidationResult(None, problems)
    models = {spec.id: spec for _, spec in specs}
    origins = {spec.id: (doc.file, doc.line_of(("id",))) for doc, spec in specs}
    desired = DesiredState(models, cluster, raw.revision, origins, hosts=hosts)
    return ValidationResult(desired, problems)


_BARE_CATALOG: Catalog = {
    name: FrameworkRules(name, None, needs_image=name == "docker")
    for name in ("llama_cpp", "vllm", "docker")
}
"""Without the registry's catalog: any parameter passes, and a docker model still needs an image."""


SpecModel = TypeVar("SpecModel", bound=BaseModel)


def _parse(
    doc: SourceDoc, kind: str, model: type[SpecModel], problems: list[Problem]
) -> SpecModel | None:
    unusable = [
        Problem(doc.file, doc.line_of(path), _dotted(path), message)
        for path, message in unusable_values(doc.data)
    ]
    if unusable:  # the schema's messages would repr a huge int, and that raises
        problems.extend(unusable)
        return None
    clean = accepted_strictly(doc.data, model)
    if clean is not None:
        return clean
    schema_problems = [_schema_problem(doc, e) for e in _validator(kind).iter_errors(doc.data)]
    if schema_problems:
        problems.extend(p for group in schema_problems for p in group)
        return None
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:  # the schema should have caught it; report, never raise
        for err in exc.errors():
            path = tuple(err["loc"])
            message = err["msg"]
            if err["type"] == "string_pattern_mismatch" and path[-1:] in (("id",), ("fallback",)):
                message = _not_dns_label(err["input"])  # "a\n": Python's `$` lets it pass
            elif path[:1] == ("env",) and path[-1:] == ("[key]",):
                path, message = path[:-1], not_env_name(str(path[1]))
            elif err["type"] == "string_pattern_mismatch" and path[-1:] in _CREDENTIAL_PATHS:
                message = not_secret_name(err["input"])
            problems.append(Problem(doc.file, doc.line_of(path), _dotted(path), message))
        return None


def accepted_strictly(data: object, model: type[SpecModel]) -> SpecModel | None:
    """The spec when pydantic's strict mode accepts `data` as it is, else None.

    The fast path for the common case, a clean file: strict mode takes no "5" for 5 and no list
    for a tuple, so what it accepts the JSON Schema (generated from the same models) accepts too
    (a property test holds the two to that). Anything it refuses goes the slow way: every JSON
    Schema error, with its line, then pydantic's own checks.
    """
    try:
        return model.model_validate(data, strict=True)
    except ValidationError:
        return None


def _schema_problem(doc: SourceDoc, error: jsonschema.ValidationError) -> list[Problem]:
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        allowed = list(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        return [
            Problem(
                doc.file,
                doc.line_of((*path, key)),
                _dotted((*path, key)),
                f"unknown field '{key}'{_suggestion(str(key), allowed)}",
            )
            for key in extra
        ]
    if error.validator == "anyOf" and not (path and path[0] == "parameters"):
        branch = _fitting_branch(error)
        if branch:  # e.g. `port: 70000` is an integer out of range, not "integer or null"
            return [p for sub in branch for p in _schema_problem(doc, sub)]
    if "propertyNames" in error.absolute_schema_path and path == ("env",):
        name = str(error.instance)
        return [Problem(doc.file, doc.line_of(("env", name)), f"env.{name}", not_env_name(name))]
    field_name = _dotted(path)
    return [Problem(doc.file, doc.line_of(path), field_name, _message(error, path))]


def _fitting_branch(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors of the one anyOf branch whose type fits the value, when exactly one does."""
    branches: dict[object, list[jsonschema.ValidationError]] = {}
    for sub in error.context or ():
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [
        errors
        for errors in branches.values()
        if not any(e.validator in ("type", "const") and not e.relative_path for e in errors)
    ]
    return fitting[0] if len(fitting) == 1 else []


def _message(error: jsonschema.ValidationError, path: FieldPath) -> str:
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"missing required field '{missing}'"
    if path and path[0] == "parameters" and error.validator in ("anyOf", "type"):
        return f"parameter value must be a scalar or a list of scalars, got {error.instance!r}"
    if error.validator == "pattern" and path and path[-1] in CREDENTIAL_FIELDS:
        return not_secret_name(error.instance)
    if error.validator == "pattern" and path and path[-1] in ("id", "fallback"):
        return _not_dns_label(error.instance)
    if error.validator == "pattern" and path == ("health_check", "path"):
        return f"{error.instance!r} must start with '/': a path on the engine's own address"
    if error.validator == "anyOf":
        branches = error.validator_value if isinstance(error.validator_value, list) else []
        options = [repr(s["const"]) if "const" in s else s.get("type") for s in branches]
        return f"{error.instance!r} must be one of: {', '.join(map(str, options))}"
    return error.message


def _not_dns_label(value: object) -> str:
    return f"{value!r} is not a DNS label (lowercase letters, digits and '-')"


def _suggestion(key: str, allowed: list[str], kind: str = "fields") -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; known {kind}: {', '.join(allowed)}"


def _dotted(path: FieldPath) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


def _check_cluster(doc: SourceDoc, cluster: HostFields) -> list[Problem]:
    problems = []
    first, last = cluster.port_range
    if first > last:
        line = doc.line_of(("port_range",))
        problems.append(
            Problem(doc.file, line, "port_range", f"first port {first} is after last {last}")
        )
    if isinstance(cluster.gpus, list):
        seen: dict[int, int] = {}
        for i, gpu in enumerate(cluster.gpus):
            line = doc.line_of(("gpus", i, "index"))
            if gpu.index in seen:
                message = f"GPU index {gpu.index} declared twice (first on line {seen[gpu.index]})"
                problems.append(Problem(doc.file, line, f"gpus[{i}].index", message))
            seen.setdefault(gpu.index, line)
    return problems


def _check_model(
    doc: SourceDoc, spec: ModelSpec, catalog: Catalog, known_frameworks: bool
) -> list[Problem]:
    problems = []

    def add(path: FieldPath, message: str, severity: Severity = "error") -> None:
        problems.append(Problem(doc.file, doc.line_of(path), _dotted(path), message, severity))

    stem = doc.file.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    if stem != spec.id:
        add(("id",), f"id '{spec.id}' does not match the file name '{stem}'", "warning")
    count = spec.resource_requirements.gpu_count
    rules = catalog.get(spec.framework)
    if rules is None:
        if known_frameworks:
            hint = _suggestion(spec.framework, sorted(catalog), "frameworks")
            add(("framework",), f"unknown framework '{spec.framework}'{hint}")
        rules = FrameworkRules(spec.framework, None)
    if spec.fallback == spec.id:
        add(("fallback",), "a model cannot be its own fallback")
    for i, alias in enumerate(spec.aliases):
        if alias == spec.id:
            add(("aliases", i), f"alias '{alias}' is the model's own id")
        elif alias in spec.aliases[:i]:
            add(("aliases", i), f"alias '{alias}' is listed twice")
    for path, message in kind_problems(spec, rules):
        add(path, message)
    if rules.remote:
        return problems  # every engine field was refused above: the rest checks engines only
    if spec.gpu_devices and len(spec.gpu_devices) != count:
        add(
            ("gpu_devices",),
            f"pins {len(spec.gpu_devices)} GPU(s) but resource_requirements.gpu_count is {count}",
        )
    if len(set(spec.gpu_devices)) != len(spec.gpu_devices):
        add(("gpu_devices",), "the same GPU is pinned twice")
    if rules.needs_image:
        if not spec.image:
            add(("image",), f"framework {spec.framework} needs an image")
        if count > 0 and spec.resource_requirements.gpu_memory_mb is None:
            add(
                ("resource_requirements",),
                "framework docker needs resource_requirements.gpu_memory_mb: "
                "a container's memory cannot be estimated",
            )
    elif spec.image:
        add(("image",), f"image is ignored for framework {spec.framework}", "warning")
    if spec.idle_timeout_s is not None and spec.activation != "on_demand":
        add(("idle_timeout_s",), "idle_timeout_s needs activation: on_demand")
    if spec.replicas > 1 and spec.port is not None:
        add(
            ("port",),
            f"a fixed port cannot serve {spec.replicas} replicas: each instance needs a port "
            "of its own (leave port null)",
        )
    known = rules.parameters
    for key in spec.parameters:
        if known is not None and key not in known:
            hint = _suggestion(key, sorted(known), "parameters")
            add(("parameters", key), f"unknown {spec.framework} parameter '{key}'{hint}")
        elif known is None and not FLAG_NAME.fullmatch(key):
            add(
                ("parameters", key),
                f"parameter name {key!r} is not a flag name "
                "(letters, digits, '.', '_' and '-', not starting with '-')",
            )
    for path, message in engine_input_problems(spec, rules):
        add(path, message)
    return problems


def _check_across(
    specs: list[tuple[SourceDoc, ModelSpec]],
    named: set[str],
    cluster: ClusterSpec,
    cluster_doc: SourceDoc | None,
    *,
    fleet: bool,
) -> list[Problem]:
    """Ids, fallbacks and overflow across files; fixed ports and pinned GPUs of one host (a
    fleet's are checked per host: reconciler.core.fleet)."""
    problems = []
    first_id: dict[str, tuple[str, int]] = {}
    first_port: dict[int, tuple[str, int]] = {}
    for doc, spec in specs:
        where = (doc.file, doc.line_of(("id",)))
        if spec.id in first_id:
            f, line = first_id[spec.id]
            problems.append(
                Problem(doc.file, where[1], "id", f"duplicate id '{spec.id}' (also in {f}:{line})")
            )
        first_id.setdefault(spec.id, where)
        if spec.port is not None and not fleet:
            line = doc.line_of(("port",))
            if spec.port in first_port:
                f, other = first_port[spec.port]
                message = f"port {spec.port} is also fixed in {f}:{other}"
                problems.append(Problem(doc.file, line, "port", message))
            first_port.setdefault(spec.port, (doc.file, line))
    by_id = {spec.id: spec for _, spec in specs}
    declared = (
        {g.index for g in cluster.gpus} if isinstance(cluster.gpus, list) else None
    )  # `auto`: the inventory is only known on the host, where the planner reports it
    for doc, spec in specs:
        if spec.overflow is not None:
            line = doc.line_of(("overflow", "model"))
            for message in overflow_problems(spec, named):
                problems.append(Problem(doc.file, line, "overflow.model", message))
        if spec.fallback is not None and spec.fallback != spec.id:
            line = doc.line_of(("fallback",))
            if spec.fallback not in named:
                message = f"fallback '{spec.fallback}' is not a model in desired-state"
                problems.append(Problem(doc.file, line, "fallback", message))
            elif spec.fallback in by_id:
                cycle = _fallback_cycle(spec.id, by_id)
                if cycle:
                    message = "fallback cycle: " + " -> ".join(cycle)
                    problems.append(Problem(doc.file, line, "fallback", message))
        if declared is not None and not spec.is_remote:  # an endpoint needs no GPU here
            for i, index in enumerate(spec.gpu_devices):
                if index not in declared:
                    known = ", ".join(map(str, sorted(declared))) or "none"
                    file = cluster_doc.file if cluster_doc else "cluster.yaml"
                    message = f"GPU {index} is not declared in {file} (declared: {known})"
                    line = doc.line_of(("gpu_devices", i))
                    problems.append(Problem(doc.file, line, f"gpu_devices[{i}]", message))
            count = spec.resource_requirements.gpu_count
            if count > len(declared):
                message = f"needs {count} GPUs but only {len(declared)} are declared"
                line = doc.line_of(("resource_requirements", "gpu_count"))
                field_name = "resource_requirements.gpu_count"
                problems.append(Problem(doc.file, line, field_name, message))
    return problems


def _fallback_cycle(start: str, by_id: Mapping[str, ModelSpec]) -> list[str]:
    chain = [start]
    current = by_id[start].fallback
    while current is not None and current in by_id:
        if current in chain:
            return [*chain[chain.index(current) :], current] if current == start else []
        chain.append(current)
        current = by_id[current].fallback
    return []

"""Several hosts from one repository: which host runs which model, and one host's view of the
fleet. Placement across hosts is written in the specs (`hosts:`), never computed. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from reconciler.core.cluster import HostFields, HostSpec
from reconciler.core.desired import DesiredState, Problem, SourceDoc
from reconciler.core.spec import ID_PATTERN, ModelSpec

HOST_FIELDS = tuple(HostFields.model_fields)
"""what a hosts/<name>.yaml sets for its host in place of cluster.yaml"""


def runs_on(spec: ModelSpec, host: str) -> bool:
    """Whether `host` runs the model's engines (a remote model runs on none: every host's
    gateway reaches its endpoint itself)."""
    return not spec.is_remote and spec.hosts is not None and host in spec.hosts


def host_view(desired: DesiredState, host: str) -> DesiredState:
    """What the reconciler of `host` reconciles: the models it runs (remote models too: its
    gateway serves them), its own GPUs and ports, and the rest of the fleet in `elsewhere`.

    A repository without hosts/ is one host: the view is the desired state itself.
    """
    if not desired.hosts:
        return desired
    mine = desired.hosts[host]
    cluster = desired.cluster.model_copy(update={name: getattr(mine, name) for name in HOST_FIELDS})
    models = {i: s for i, s in desired.models.items() if s.is_remote or runs_on(s, host)}
    elsewhere = {i: s for i, s in desired.models.items() if i not in models}
    origins = {i: o for i, o in desired.origins.items() if i in models}
    return replace(
        desired, models=models, cluster=cluster, origins=origins, host=host, elsewhere=elsewhere
    )


def short_host_name(hostname: str) -> str:
    """A machine's name as a fleet knows it: its host name up to the first dot."""
    return hostname.split(".", 1)[0]


def undeclared_host(desired: DesiredState, host: str, hosts_dir: str) -> Problem | None:
    """The one problem of a fleet pass on a host that hosts/ does not declare (its reconciler
    then touches nothing), else None."""
    if not desired.hosts or host in desired.hosts:
        return None
    message = (
        f"this host is '{host}': no {hosts_dir}/{host}.yaml (the fleet declares "
        f"{', '.join(sorted(desired.hosts))}); pass --host-name or set RECONCILER_HOST_NAME"
    )
    return Problem(hosts_dir, 1, "", message)


def placements(desired: DesiredState) -> dict[str, tuple[str, ...]]:
    """model id -> the hosts that run it, for every engine model of a fleet."""
    return {
        model_id: tuple(spec.hosts)
        for model_id, spec in sorted(desired.models.items())
        if not spec.is_remote and spec.hosts
    }


# ---- validation: what a fleet's files must agree on ------------------------------------------


def host_name(file: str) -> str:
    """A host's name: its file's name without the extension (hosts/gpu-a.yaml is gpu-a)."""
    return file.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def fleet_problems(
    host_docs: Sequence[SourceDoc],
    hosts: Mapping[str, HostSpec],
    specs: Sequence[tuple[SourceDoc, ModelSpec]],
    cluster_doc: SourceDoc | None,
) -> list[Problem]:
    """What is wrong with where models run: host names, the host fields left in cluster.yaml,
    each spec's `hosts`, and fixed ports and pinned GPUs on each host.

    `host_docs` are every hosts/*.yaml read (valid or not: any of them makes a fleet), `hosts`
    the ones that parsed, by name. Without host files only `hosts` written anyway is checked.
    """
    problems = _host_name_problems(host_docs)
    declared = sorted({host_name(d.file) for d in host_docs})
    if declared and cluster_doc is not None:
        for name in HOST_FIELDS:
            if name in cluster_doc.data:
                message = (
                    f"in a fleet, hosts/<name>.yaml say this (declared: {', '.join(declared)})"
                )
                problems.append(_at(cluster_doc, (name,), message))
    for doc, spec in specs:
        problems.extend(_placement_problems(doc, spec, declared))
    if declared:
        problems.extend(_port_clashes(specs, declared))
        problems.extend(_pinned_gpu_problems(specs, hosts))
    return problems


def _host_name_problems(host_docs: Sequence[SourceDoc]) -> list[Problem]:
    problems = []
    first: dict[str, str] = {}
    for doc in host_docs:
        name = host_name(doc.file)
        if not re.fullmatch(ID_PATTERN, name):
            message = (
                f"host name '{name}' (the file's name) is not a DNS label "
                "(lowercase letters, digits and '-')"
            )
            problems.append(Problem(doc.file, 1, "", message))
        elif name in first:
            message = f"host '{name}' is declared twice (also {first[name]})"
            problems.append(Problem(doc.file, 1, "", message))
        first.setdefault(name, doc.file)
    return problems


def _placement_problems(doc: SourceDoc, spec: ModelSpec, declared: Sequence[str]) -> list[Problem]:
    known = ", ".join(declared)
    if spec.is_remote:
        if spec.hosts is None:
            return []
        message = (
            "a remote model runs on no host: every host's gateway reaches its endpoint "
            "(remove hosts)"
        )
        return [_at(doc, ("hosts",), message)]
    if spec.hosts is None:
        if not declared:
            return []
        message = f"'{spec.id}' runs on no host: add hosts: [{known}] (declared: {known})"
        return [_at(doc, ("id",), message)]
    problems = []
    for i, name in enumerate(spec.hosts):
        if name in spec.hosts[:i]:
            problems.append(_at(doc, ("hosts", i), f"host '{name}' is listed twice"))
        elif name not in declared:
            if declared:
                message = f"unknown host '{name}' (declared: {known})"
            else:
                message = (
                    f"unknown host '{name}': the repository declares no hosts "
                    f"(add hosts/{name}.yaml beside models/)"
                )
            problems.append(_at(doc, ("hosts", i), message))
    return problems


def _port_clashes(
    specs: Sequence[tuple[SourceDoc, ModelSpec]], declared: Sequence[str]
) -> list[Problem]:
    """A fixed port is a clash only between models that share a host."""
    problems = []
    first: dict[tuple[str, int], tuple[str, int]] = {}
    for doc, spec in specs:
        if spec.port is None or spec.is_remote:
            continue
        line = doc.line_of(("port",))
        clashes = []
        for host in dict.fromkeys(spec.hosts or ()):
            if host not in declared:
                continue
            if (host, spec.port) in first:
                clashes.append((host, first[host, spec.port]))
            first.setdefault((host, spec.port), (doc.file, line))
        if clashes:
            where = "; ".join(f"on host {h}: {f}:{n}" for h, (f, n) in clashes)
            message = f"port {spec.port} is also fixed ({where})"
            problems.append(Problem(doc.file, line, "port", message))
    return problems


def _pinned_gpu_problems(
    specs: Sequence[tuple[SourceDoc, ModelSpec]], hosts: Mapping[str, HostSpec]
) -> list[Problem]:
    """A pinned GPU index and a GPU count, against each of the model's hosts that declares its
    GPUs (`auto`: only that host knows, and its planner reports it)."""
    problems = []
    for doc, spec in specs:
        if spec.is_remote:
            continue
        count = spec.resource_requirements.gpu_count
        for host in dict.fromkeys(spec.hosts or ()):
            gpus = hosts[host].gpus if host in hosts else "auto"
            if gpus == "auto":
                continue
            indexes = sorted({g.index for g in gpus})
            known = ", ".join(map(str, indexes)) or "none"
            for i, index in enumerate(spec.gpu_devices):
                if index not in indexes:
                    message = (
                        f"GPU {index} is not declared in hosts/{host}.yaml (declared: {known})"
                    )
                    problems.append(_at(doc, ("gpu_devices", i), message))
            if count > len(indexes):
                message = f"needs {count} GPUs but host {host} declares only {len(indexes)}"
                problems.append(_at(doc, ("resource_requirements", "gpu_count"), message))
    return problems


def _at(doc: SourceDoc, path: tuple[str | int, ...], message: str) -> Problem:
    dotted = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
    return Problem(doc.file, doc.line_of(path), dotted, message)

"""A fleet's validation (desired-state/hosts/<name>.yaml and each spec's `hosts`): a table of
repositories, each with the exact problems expected, as `file:line: severity: field: message`.

The expected lines are written out by hand from the texts below (the oracle is the table, not the
code): a check that fires twice, at the wrong line or on the wrong file fails the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from reconciler.core.desired import Problem, RawDesiredState, SourceDoc
from reconciler.core.spec_checks import validate
from reconciler.engines.registry import catalog
from reconciler.source.load import parse_document

CATALOG = catalog()
A = "gpus:\n  - {index: 0, memory_mb: 24000}\ngateway: http://10.0.0.1:8000\n"
B = (
    "gpus:\n  - {index: 0, memory_mb: 24000}\n  - {index: 1, memory_mb: 24000}\n"
    "port_range: [8200, 8299]\ngateway: http://10.0.0.2:8000/\n"
)


def engine(model_id: str, *extra: str) -> str:
    """id on line 1, framework 2, model_path 3, `extra` from line 4 on."""
    lines = [f"id: {model_id}", "framework: llama_cpp", "model_path: /models/m.gguf", *extra]
    return "\n".join(lines) + "\n"


def remote(model_id: str, *extra: str) -> str:
    lines = [
        f"id: {model_id}",
        "framework: remote",
        "endpoint: https://api.example.com/v1",
        "upstream_model: m",
        *extra,
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Repo:
    models: dict[str, str]
    hosts: dict[str, str] = field(default_factory=lambda: {"a": A, "b": B})
    cluster: str | None = None


def docs(texts: dict[str, str], directory: str) -> tuple[list[SourceDoc], list[Problem]]:
    found, problems = [], []
    for name, text in texts.items():
        file = name if "." in name else f"{directory}/{name}.yaml"
        doc, problem = parse_document(file, text)
        if problem is not None:
            problems.append(problem)
        if doc is not None:
            found.append(doc)
    return found, problems


def raw_of(repo: Repo) -> RawDesiredState:
    models, bad_models = docs(repo.models, "models")
    hosts, bad_hosts = docs(repo.hosts, "hosts")
    cluster = None
    if repo.cluster is not None:
        cluster, _ = parse_document("cluster.yaml", repo.cluster)
    return RawDesiredState("ds", None, cluster, models, [*bad_models, *bad_hosts], hosts)


def problems_of(repo: Repo) -> list[str]:
    return [str(p) for p in validate(raw_of(repo), catalog=CATALOG).problems]


TABLE: dict[str, tuple[Repo, list[str]]] = {
    "a valid fleet": (
        Repo({"m": engine("m", "hosts: [a, b]"), "r": remote("r"), "n": engine("n", "hosts: [b]")}),
        [],
    ),
    "a model on no host": (
        Repo({"m": engine("m")}),
        ["models/m.yaml:1: error: id: 'm' runs on no host: add hosts: [a, b] (declared: a, b)"],
    ),
    "an unknown host, with its index": (
        Repo({"m": engine("m", "hosts:", "  - a", "  - c")}),
        ["models/m.yaml:6: error: hosts[1]: unknown host 'c' (declared: a, b)"],
    ),
    "a host listed twice": (
        Repo({"m": engine("m", "hosts: [b, b]")}),
        ["models/m.yaml:4: error: hosts[1]: host 'b' is listed twice"],
    ),
    "a remote model with hosts": (
        Repo({"r": remote("r", "hosts: [a]")}),
        [
            "models/r.yaml:5: error: hosts: a remote model runs on no host: every host's "
            "gateway reaches its endpoint (remove hosts)"
        ],
    ),
    "hosts without any host file": (
        Repo({"m": engine("m", "hosts: [a]")}, hosts={}),
        [
            "models/m.yaml:4: error: hosts[0]: unknown host 'a': the repository declares no "
            "hosts (add hosts/a.yaml beside models/)"
        ],
    ),
    "a host field left in cluster.yaml": (
        Repo(
            {"m": engine("m", "hosts: [a]")},
            cluster="gateway: {queue_timeout_s: 5}\nplacement: pack\nport_range: [9000, 9010]\n",
        ),
        [
            "cluster.yaml:2: error: placement: in a fleet, hosts/<name>.yaml say this "
            "(declared: a, b)",
            "cluster.yaml:3: error: port_range: in a fleet, hosts/<name>.yaml say this "
            "(declared: a, b)",
        ],
    ),
    "the same fixed port on two hosts is no clash": (
        Repo(
            {
                "m": engine("m", "port: 9001", "hosts: [a]"),
                "n": engine("n", "port: 9001", "hosts: [b]"),
            }
        ),
        [],
    ),
    "the same fixed port on one host is": (
        Repo(
            {
                "m": engine("m", "port: 9001", "hosts: [a, b]"),
                "n": engine("n", "port: 9001", "hosts: [b]"),
            }
        ),
        ["models/n.yaml:4: error: port: port 9001 is also fixed (on host b: models/m.yaml:4)"],
    ),
    "a pinned GPU one of its hosts lacks": (
        Repo(
            {
                "m": engine(
                    "m",
                    "gpu_devices: [1]",
                    "resource_requirements: {gpu_count: 1}",
                    "hosts: [a, b]",
                )
            }
        ),
        [
            "models/m.yaml:4: error: gpu_devices[0]: GPU 1 is not declared in hosts/a.yaml "
            "(declared: 0)"
        ],
    ),
    "more GPUs than a host declares": (
        Repo({"m": engine("m", "resource_requirements: {gpu_count: 2}", "hosts: [a, b]")}),
        [
            "models/m.yaml:4: error: resource_requirements.gpu_count: needs 2 GPUs but host a "
            "declares only 1"
        ],
    ),
    "a fallback on another host": (
        Repo({"m": engine("m", "fallback: n", "hosts: [a]"), "n": engine("n", "hosts: [b]")}),
        [],
    ),
    "a bad host file, at its line": (
        Repo(
            {"m": engine("m", "hosts: [a]")},
            hosts={"a": A + "placement: tight\n", "b": "gpus: auto\n"},
        ),
        [
            "hosts/a.yaml:4: error: placement: 'tight' is not one of ['spread', 'pack']",
            "hosts/b.yaml:1: error: missing required field 'gateway'",
        ],
    ),
    "a gateway URL with a path": (
        Repo({"m": engine("m", "hosts: [a]")}, hosts={"a": "gateway: http://h:8000/v1\n"}),
        [
            "hosts/a.yaml:1: error: gateway: 'http://h:8000/v1' does not match '^https?://[^/?#@\\\\s]+/?$'"
        ],
    ),
    "a host's own port range backwards": (
        Repo({"m": engine("m", "hosts: [a]")}, hosts={"a": A + "port_range: [9010, 9000]\n"}),
        ["hosts/a.yaml:4: error: port_range: first port 9010 is after last 9000"],
    ),
    "a host name that is not a DNS label": (
        Repo({"m": engine("m", "hosts: [a]")}, hosts={"a": A, "hosts/Big_One.yaml": A}),
        [
            "hosts/Big_One.yaml:1: error: host name 'Big_One' (the file's name) is not a DNS "
            "label (lowercase letters, digits and '-')"
        ],
    ),
    "a host declared twice (.yaml and .yml)": (
        Repo({"m": engine("m", "hosts: [a]")}, hosts={"a": A, "hosts/a.yml": A}),
        ["hosts/a.yml:1: error: host 'a' is declared twice (also hosts/a.yaml)"],
    ),
}


@pytest.mark.parametrize("case", sorted(TABLE))
def test_fleet_problems_are_exactly_the_expected(case: str) -> None:
    repo, expected = TABLE[case]
    assert problems_of(repo) == sorted(expected)


def test_a_valid_fleet_carries_its_hosts_and_the_whole_fleet() -> None:
    repo = Repo(
        {"m": engine("m", "hosts: [a, b]"), "r": remote("r"), "n": engine("n", "hosts: [b]")}
    )
    desired = validate(raw_of(repo), catalog=CATALOG).desired
    assert desired is not None
    assert sorted(desired.hosts) == ["a", "b"]
    assert desired.hosts["b"].port_range == (8200, 8299)
    assert desired.host is None and sorted(desired.models) == ["m", "n", "r"]


def test_without_host_files_a_fixed_port_clash_is_still_one_host_clash() -> None:
    repo = Repo({"m": engine("m", "port: 9001"), "n": engine("n", "port: 9001")}, hosts={})
    assert problems_of(repo) == [
        "models/n.yaml:4: error: port: port 9001 is also fixed in models/m.yaml:4"
    ]

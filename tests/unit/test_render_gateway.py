"""`reconciler render kubernetes` renders the gateway: its Deployment, Service and routes
ConfigMap, and a headless Service per engine model. The objects are validated strictly against
the Kubernetes OpenAPI schemas (kubernetes-validate, as tests/unit/test_kubernetes.py does for
the models), and the routes file is read back with the gateway's own parser."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from reconciler import kubernetes as k8s
from reconciler.cli.loading import validate_here
from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState
from reconciler.core.spec import ModelSpec
from reconciler.gateway import discovery
from reconciler.gateway.cluster_routes import routes_file
from reconciler.gateway.discovery import with_addresses
from reconciler.gateway.routes import RouteModel, Routes, ServiceRoute, parse_routes
from reconciler.source.load import load_directory

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
VERSIONS = ("1.30", kubernetes_validate.latest_version())
NS = "llm"


def spec(model_id: str, **fields: Any) -> ModelSpec:
    base: dict[str, Any] = {
        "id": model_id,
        "framework": "llama_cpp",
        "model_path": f"/models/{model_id}.gguf",
        "resource_requirements": {"gpu_count": 1, "gpu_memory_mb": 4000},
    }
    return ModelSpec.model_validate({**base, **fields})


def remote(model_id: str, **fields: Any) -> ModelSpec:
    base = {"id": model_id, "framework": "remote", "endpoint": "https://api.example.com/v1"}
    return ModelSpec.model_validate({**base, **fields})


CLUSTER = {
    "gateway": {
        "api_keys": [{"name": "ops", "key_env": "RECONCILER_SECRET_OPS_KEY"}],
        "queue_timeout_s": 42,
    },
    "kubernetes": {"gateway": {"image": "registry.example.com/reconciler:0.1.0", "replicas": 3}},
}


def fleet() -> list[ModelSpec]:
    return [
        spec("chat", aliases=["gpt-4o", "default"], fallback="small", priority=9),
        spec("small", aliases=["tiny"], port=9001),
        spec("burst", overflow={"model": "cloud", "queue_over": 4}, routing="least_outstanding"),
        spec("off", enabled=False),
        spec("lazy", activation="on_demand", idle_timeout_s=60),
        remote("cloud", upstream_model="gpt-4o-mini", api_key_env="RECONCILER_SECRET_CLOUD"),
    ]


def render(*specs: ModelSpec, cluster: dict[str, Any] | None = None) -> k8s.Rendered:
    desired = DesiredState(
        {s.id: s for s in specs},
        ClusterSpec.model_validate(CLUSTER if cluster is None else cluster),
        None,
    )
    return k8s.render(desired, namespace=NS, routes_file=routes_file)


def gateway_docs(rendered: k8s.Rendered) -> list[dict[str, Any]]:
    assert rendered.problems == []
    return list(yaml.safe_load_all(rendered.files[k8s.GATEWAY_FILE]))


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def table(docs: list[dict[str, Any]]) -> Routes:
    config_map = one(docs, "ConfigMap", "reconciler-gateway-routes")
    return parse_routes(config_map["data"]["routes.json"])


def gateway_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", "reconciler-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_the_gateway_objects_validate_strictly() -> None:
    docs = gateway_docs(render(*fleet()))
    kinds = sorted(d["kind"] for d in docs)
    # ConfigMap, Deployment, its Service, and a headless Service per engine model (5)
    assert kinds == ["ConfigMap", "Deployment"] + ["Service"] * 6
    for doc in docs:
        assert doc["metadata"]["namespace"] == NS
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_bundled_desired_state_renders_a_strictly_valid_gateway() -> None:
    raw = load_directory(REPO / "desired-state")
    result = validate_here(raw, check_paths=False)
    assert result.desired is not None
    rendered, problems = k8s.render_loaded(raw, result.desired, NS, routes_file)
    assert problems == []
    docs = gateway_docs(rendered)
    for doc in docs:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    assert sorted(table(docs).models) == sorted(result.desired.models)


def test_the_routes_hold_every_model_alias_fallback_remote_and_overflow() -> None:
    routes = table(gateway_docs(render(*fleet())))
    assert sorted(routes.models) == ["burst", "chat", "cloud", "lazy", "off", "small"]
    chat = routes.models["chat"]
    assert (chat.aliases, chat.fallback) == (("gpt-4o", "default"), "small")
    assert routes.models["small"].aliases == ("tiny",)
    burst = routes.models["burst"]
    assert burst.overflow is not None
    assert (burst.overflow.model, burst.overflow.queue_over) == ("cloud", 4)
    assert burst.routing == "least_outstanding"
    assert routes.models["off"].enabled is False
    cloud = routes.models["cloud"]
    assert cloud.remote is not None and cloud.service is None
    assert (cloud.remote.endpoint, cloud.remote.upstream_model) == (
        "https://api.example.com/v1",
        "gpt-4o-mini",
    )
    assert cloud.remote.key_env == "RECONCILER_SECRET_CLOUD"
    assert cloud.status == "running"  # routed at once: nothing probes it on Kubernetes
    assert [i.url for i in cloud.instances] == ["https://api.example.com/v1"]
    # cluster.yaml's gateway settings, and a loaded table (generation 0 = none yet)
    assert routes.settings.queue_timeout_s == 42
    assert [k.key_env for k in routes.settings.api_keys] == ["RECONCILER_SECRET_OPS_KEY"]
    assert routes.generation >= 1
    for model_id in ("chat", "small", "burst", "off", "lazy"):
        route = routes.models[model_id]
        assert route.service is not None and route.instances == ()  # found by resolution
        assert route.status == "starting"


def test_each_engine_model_has_a_headless_service_that_its_route_names() -> None:
    rendered = render(*fleet())
    docs = gateway_docs(rendered)
    routes = table(docs)
    for model_id in ("chat", "small", "burst", "off", "lazy"):
        headless = one(docs, "Service", f"{model_id}-pods")
        model_doc = list(yaml.safe_load_all(rendered.files[f"models/{model_id}.yaml"]))
        deployment = one(model_doc, "Deployment", model_id)
        (engine,) = deployment["spec"]["template"]["spec"]["containers"]
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["publishNotReadyAddresses"] is False  # ready pods only
        selector = headless["spec"]["selector"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        assert selector == deployment["spec"]["selector"]["matchLabels"]
        (port,) = headless["spec"]["ports"]
        route = routes.models[model_id]
        assert route.service == ServiceRoute(
            f"{model_id}-pods.{NS}.svc.cluster.local", engine["ports"][0]["containerPort"]
        )
        assert port["port"] == route.service.port
    assert routes.models["small"].service == ServiceRoute(
        f"small-pods.{NS}.svc.cluster.local", 9001
    )
    assert not [d for d in docs if d["metadata"]["name"] == "cloud-pods"]


def test_keys_come_from_the_operators_secret_never_from_git() -> None:
    rendered = render(*fleet())
    docs = gateway_docs(rendered)
    env = {e["name"]: e for e in gateway_container(docs)["env"]}
    assert sorted(env) == [
        "RECONCILER_SECRET_CLOUD",
        "RECONCILER_SECRET_CLOUD_HOSTS",  # the binding is the operator's too, not the spec's
        "RECONCILER_SECRET_OPS_KEY",
    ]
    for name, entry in env.items():
        assert "value" not in entry
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "reconciler-gateway-keys", "key": name}  # optional: false
    assert "Secret" not in {d["kind"] for d in docs}
    (note,) = [n for n in rendered.notes if "create Secret" in n]
    assert "RECONCILER_SECRET_CLOUD_HOSTS" in note


def test_the_gateway_pod_is_non_root_probed_and_scraped() -> None:
    docs = gateway_docs(render(*fleet()))
    deployment = one(docs, "Deployment", "reconciler-gateway")
    template = deployment["spec"]["template"]
    container = gateway_container(docs)
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == "registry.example.com/reconciler:0.1.0"
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
    }
    (mount,) = container["volumeMounts"]
    (volume,) = template["spec"]["volumes"]
    assert (mount["mountPath"], volume["configMap"]["name"]) == (
        "/etc/reconciler",
        "reconciler-gateway-routes",
    )
    assert "subPath" not in mount  # the kubelet updates the file in place; the gateway reloads
    service = one(docs, "Service", "reconciler-gateway")
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 8000
    # the gateway may hold max_buffered_mb of request bodies: its limit leaves room for them
    limit = container["resources"]["limits"]["memory"]
    assert int(limit.removesuffix("Mi")) > 256


def test_with_the_gateway_aliases_and_fallbacks_apply_but_on_demand_does_not() -> None:
    rendered = render(*fleet())
    chat = next(yaml.safe_load_all(rendered.files["models/chat.yaml"]))
    annotations = chat["metadata"]["annotations"]
    assert k8s.ANNOTATION_FALLBACK not in annotations
    assert k8s.ANNOTATION_ALIASES not in annotations
    assert not [n for n in rendered.notes if "alias" in n or "fallback" in n]
    assert [n for n in rendered.notes if n.startswith("lazy:") and "on_demand" in n]
    assert any("remote model cloud" in n and "the gateway routes it" in n for n in rendered.notes)


def test_the_kustomization_lists_the_gateway() -> None:
    rendered = render(*fleet())
    (kustomization,) = yaml.safe_load_all(rendered.files[k8s.KUSTOMIZATION])
    assert k8s.GATEWAY_FILE in kustomization["resources"]


@pytest.mark.parametrize(
    ("specs", "problem"),
    [
        ([spec("m" * 59)], "too long for the gateway's Service"),
        ([spec("reconciler-gateway")], "a Service the gateway needs"),
        ([spec("llama"), spec("llama-pods")], "a Service the gateway needs"),
    ],
)
def test_a_model_whose_name_the_gateway_needs_is_a_problem(
    specs: list[ModelSpec], problem: str
) -> None:
    rendered = render(*specs)
    assert rendered.files == {}
    assert any(problem in p.message for p in rendered.problems)


def test_the_placeholder_image_and_missing_keys_are_said() -> None:
    rendered = render(spec("chat"), cluster={})
    assert any("placeholder" in n and "deploy/Dockerfile" in n for n in rendered.notes)
    assert any("no gateway.api_keys" in n for n in rendered.notes)
    assert "env" not in gateway_container(gateway_docs(rendered))


# ---- discovery: a Service's addresses become the model's instances -------------------------


def service_table(enabled: bool = True) -> Routes:
    route = RouteModel(
        "chat", "starting", enabled=enabled, service=ServiceRoute("chat-pods.llm.svc", 8080)
    )
    return Routes({"chat": route, "plain": RouteModel("plain", "running")}, generation=1)


@pytest.mark.parametrize(
    ("addresses", "status", "urls"),
    [
        ({}, "starting", []),  # not resolved yet: requests wait
        ({"chat-pods.llm.svc": ()}, "error", []),  # no ready pod: fallback, else 503
        (
            {"chat-pods.llm.svc": ("10.0.0.7", "10.0.1.9")},
            "running",
            ["http://10.0.0.7:8080", "http://10.0.1.9:8080"],
        ),
        ({"chat-pods.llm.svc": ("fd00::7",)}, "running", ["http://[fd00::7]:8080"]),
    ],
)
def test_a_services_addresses_are_the_models_instances(
    addresses: dict[str, tuple[str, ...]], status: str, urls: list[str]
) -> None:
    routes = with_addresses(service_table(), addresses)
    chat = routes.models["chat"]
    assert chat.status == status
    assert [i.url for i in chat.instances] == urls
    assert routes.models["plain"] == service_table().models["plain"]


def test_a_disabled_model_without_pods_is_disabled_not_an_error() -> None:
    routes = with_addresses(service_table(enabled=False), {"chat-pods.llm.svc": ()})
    assert routes.models["chat"].status == "disabled"


class Resolver:
    """A stand-in for the event loop's getaddrinfo: answers, or raises, as told."""

    def __init__(self, outcome: list[str] | OSError) -> None:
        self.outcome = outcome

    async def __call__(self, host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        if isinstance(self.outcome, OSError):
            raise self.outcome
        return [(0, 0, 0, "", (a, port)) for a in self.outcome]


def resolved(outcome: list[str] | OSError, previous: tuple[str, ...] | None) -> tuple[str, ...]:
    async def run() -> tuple[str, ...]:
        loop = asyncio.get_running_loop()
        loop.getaddrinfo = Resolver(outcome)  # type: ignore[method-assign]
        return await discovery.resolve("chat-pods.llm.svc", 8080, previous)

    return asyncio.run(run())


def test_resolution_follows_the_dns_answer_and_survives_a_resolver_hiccup() -> None:
    old = ("10.0.0.7",)
    # one instance per pod: a dual-stack pod's IPv6 address is left out when it has an IPv4 one
    assert resolved(["10.0.1.9", "10.0.0.7", "fd00::7", "10.0.0.7"], old) == (
        "10.0.0.7",
        "10.0.1.9",
    )
    assert resolved(["fd00::7"], None) == ("fd00::7",)
    # no such name (no ready pod): no instance, whatever was there before
    assert resolved(socket.gaierror(socket.EAI_NONAME, "Name or service not known"), old) == ()
    # the resolver failing otherwise keeps the last answer: a DNS hiccup does not empty a model
    assert resolved(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), old) == old
    assert resolved(TimeoutError(), old) == old
    assert resolved(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), None) == ()


# ---- the image -------------------------------------------------------------------------------


def instruction(dockerfile: str, name: str) -> str:
    (found,) = re.findall(rf"^{name} (.*)$", dockerfile, re.M)
    return str(found)


def test_the_dockerfile_copies_what_exists_and_runs_the_rendered_gateway() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    copied = [
        path
        for line in text.splitlines()
        if line.startswith("COPY ")
        for path in line.split()[1:-1]
    ]
    assert copied and all((REPO / p).exists() for p in copied), copied
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^USER 10001", text, re.M)  # the uid the Deployment runs as
    entrypoint = json.loads(instruction(text, "ENTRYPOINT"))
    cmd = json.loads(instruction(text, "CMD"))
    assert entrypoint == ["python", "-m", "reconciler.gateway"]
    # the image's default arguments are the rendered Deployment's (default port)
    assert cmd == gateway_container(gateway_docs(render(spec("chat"))))["args"]
    usage = subprocess.run(
        [sys.executable, "-m", "reconciler.gateway", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    for flag in (a for a in cmd if a.startswith("--")):
        assert flag in usage, flag

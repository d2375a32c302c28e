"""The Kubernetes objects of a rendering: PriorityClasses, and a Deployment + Service per model."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.core.cluster import KubernetesSpec
from reconciler.core.spec import ModelSpec
from reconciler.kubernetes.pods import (
    GPU_RESOURCE,
    PORT_NAME,
    PodModel,
    container,
    container_port,
    gpu_memory_affinity,
    volumes,
)

PREFIX = "reconciler.io/"
LABEL_MODEL = PREFIX + "model"
LABEL_FRAMEWORK = PREFIX + "framework"
LABEL_SPEC_HASH = PREFIX + "spec-hash"
ANNOTATION_SOURCE_FILE = PREFIX + "source-file"
ANNOTATION_REVISION = PREFIX + "source-revision"
ANNOTATION_NAME = PREFIX + "model-name"
ANNOTATION_FALLBACK = PREFIX + "fallback-not-applied"
ANNOTATION_PIN = PREFIX + "gpu-devices-not-applied"
ANNOTATION_ALIASES = PREFIX + "aliases-not-applied"
ANNOTATION_ACTIVATION = PREFIX + "activation-not-applied"
MANAGED_BY = {"app.kubernetes.io/managed-by": "reconciler"}

PRIORITY_BASE = 1_000_000
PRIORITY_STEP = 1_000
# Kubernetes marks a rollout failed after this long without progress (its default, 600 s); a
# model allowed a longer start must not be reported failed (Argo CD: Degraded) while loading.
MIN_PROGRESS_DEADLINE_S = 600


def priority_value(priority: int) -> int:
    """The PriorityClass value of spec priority 1..10 (the documented mapping)."""
    return PRIORITY_BASE + PRIORITY_STEP * priority


def priority_class_name(priority: int) -> str:
    return f"reconciler-priority-{priority:02d}"  # zero-padded: names sort like priorities


def priority_class(priority: int) -> dict[str, object]:
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": priority_class_name(priority), "labels": dict(MANAGED_BY)},
        "value": priority_value(priority),
        "globalDefault": False,
        "preemptionPolicy": "PreemptLowerPriority",
        "description": f"reconciler spec priority {priority} of 10 (10 = most important)",
    }


@dataclass(frozen=True)
class ModelContext:
    """What rendering one model needs besides its spec."""

    namespace: str
    revision: str
    source_file: str
    memory_mb: int | None
    reserved_mb: int
    gateway: bool = False
    """the gateway is rendered too: it routes aliases and falls back, as on one host"""


def labels(spec: ModelSpec) -> dict[str, str]:
    return {**MANAGED_BY, "app.kubernetes.io/name": spec.id, LABEL_MODEL: spec.id}


def deployment(
    spec: ModelSpec, pod: PodModel, ctx: ModelContext, kube: KubernetesSpec
) -> dict[str, object]:
    count = spec.resource_requirements.gpu_count
    pod_spec: dict[str, object] = {
        "priorityClassName": priority_class_name(spec.priority),
        # Service links would put <SERVICE>_PORT variables into every engine: a Service named
        # `vllm` gives VLLM_PORT=tcp://..., which vLLM reads as its own setting and dies on.
        "enableServiceLinks": False,
        "containers": [container(spec, pod, kube)],
    }
    found = volumes(spec, pod, kube)
    if found:
        pod_spec["volumes"] = found
    if count and ctx.memory_mb is not None:
        pod_spec["affinity"] = gpu_memory_affinity(ctx.memory_mb + ctx.reserved_mb)
    if count:  # GPU nodes are often tainted so that only GPU workloads land there
        pod_spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists"}]
    spec_hash = spec.spec_hash()
    deadline = max(MIN_PROGRESS_DEADLINE_S, math.ceil(spec.health_check.startup_timeout_s) + 60)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": spec.id,
            "namespace": ctx.namespace,
            "labels": {**labels(spec), LABEL_FRAMEWORK: spec.framework, LABEL_SPEC_HASH: spec_hash},
            "annotations": model_annotations(spec, ctx),
        },
        "spec": {
            "replicas": spec.replicas if spec.enabled else 0,
            # Recreate: the old pod releases its GPU before the new one asks for it, so a
            # rollout never needs (or double-books) a second GPU.
            "strategy": {"type": "Recreate"},
            "progressDeadlineSeconds": deadline,
            "selector": {"matchLabels": {LABEL_MODEL: spec.id}},
            "template": {
                "metadata": {"labels": {**labels(spec), LABEL_SPEC_HASH: spec_hash}},
                "spec": pod_spec,
            },
        },
    }


def model_annotations(spec: ModelSpec, ctx: ModelContext) -> dict[str, str]:
    found = {ANNOTATION_SOURCE_FILE: ctx.source_file, ANNOTATION_REVISION: ctx.revision}
    if spec.name:
        found[ANNOTATION_NAME] = spec.name
    if spec.fallback and not ctx.gateway:
        found[ANNOTATION_FALLBACK] = spec.fallback
    if spec.gpu_devices:
        found[ANNOTATION_PIN] = ",".join(str(g) for g in spec.gpu_devices)
    if spec.aliases and not ctx.gateway:
        found[ANNOTATION_ALIASES] = ",".join(spec.aliases)
    if spec.activation != "always":
        found[ANNOTATION_ACTIVATION] = on_demand_text(spec)
    return found


def service(spec: ModelSpec, ctx: ModelContext, kube: KubernetesSpec) -> dict[str, object]:
    port = container_port(spec, kube)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.id, "namespace": ctx.namespace, "labels": labels(spec)},
        "spec": {
            "type": kube.service_type,
            "selector": {LABEL_MODEL: spec.id},
            "ports": [
                {"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def model_notes(spec: ModelSpec, memory_mb: int | None, gateway: bool = False) -> list[str]:
    """What does not carry over to Kubernetes for this model, in the operator's words; with
    the `gateway`, aliases and fallbacks do."""
    notes = []
    if spec.fallback and not gateway:
        notes.append(
            f"{spec.id}: fallback {spec.fallback} does not apply on Kubernetes (no controller "
            "swaps models there); it stays pending until a node has room, preempting lower "
            "priorities"
        )
    if spec.gpu_devices:
        notes.append(
            f"{spec.id}: gpu_devices {list(spec.gpu_devices)} does not apply on Kubernetes "
            "(the device plugin chooses the GPUs)"
        )
    if spec.aliases and not gateway:
        notes.append(
            f"{spec.id}: aliases {', '.join(spec.aliases)} do not apply on Kubernetes (no "
            f"gateway routes them there); clients use the Service {spec.id}"
        )
    if spec.activation != "always":
        notes.append(
            f"{spec.id}: {on_demand_text(spec)} does not apply on Kubernetes (nothing starts a "
            "model on its first request there); the Deployment runs all the time"
        )
    if spec.resource_requirements.gpu_count and memory_mb is None:
        notes.append(
            f"{spec.id}: no GPU memory affinity (memory not declared): set "
            "resource_requirements.gpu_memory_mb to keep it off GPUs that are too small"
        )
    return notes


def on_demand_text(spec: ModelSpec) -> str:
    timeout = spec.idle_timeout_s
    return f"activation {spec.activation}" + (
        f", idle_timeout_s {timeout:g}" if timeout is not None else ""
    )


def kustomization(resources: Iterable[str]) -> dict[str, object]:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(resources),
    }

"""Render desired state to Kubernetes manifests for a fleet, synced by Argo CD or Flux.

One reconciler manages one host; a fleet is Kubernetes' job. The same specs become, per model, a
Deployment and a Service, plus one PriorityClass per priority level in use and a
`kustomization.yaml` listing everything. Kubernetes' scheduler then does placement, priority and
preemption across nodes, and the NVIDIA device plugin hands out GPUs.

Choices an operator should know about:

- **Argv.** The container runs exactly what the engine's descriptor builds (its pure argv
  builder, the one the host engines use), asked for a placement inside a pod: host 0.0.0.0, the
  container port, the model path as mounted, the image's launcher (llama-server, `vllm`, ...).
  It is the container's `command`, so it does not depend on the image's ENTRYPOINT; an engine
  whose argv is a container's own arguments (docker) keeps its image's ENTRYPOINT and gets them
  as `args`, as the Docker engine does. A parameter value that would become a flag is a problem.
- **Environment.** The spec's env, minus the names the engine reads as its listen address or
  port, plus what the engine needs (a docker spec's PORT and MODEL_PATH). The reconciler's
  RECONCILER_* markers identify host processes and mean nothing in a pod; CUDA_VISIBLE_DEVICES is
  the device plugin's business.
- **Priority.** Priority p (1..10) is PriorityClass `reconciler-priority-NN` (zero-padded), value
  PRIORITY_BASE + PRIORITY_STEP * p: above ordinary pods (0), far below the system classes
  (2,000,000,000), gaps left for an operator's own classes. Never `globalDefault`; preemption
  policy PreemptLowerPriority, as on one host.
- **GPUs.** `nvidia.com/gpu: gpu_count` as a limit; a known memory requirement (explicit, or
  estimated for a packaged model, whose files every rendering machine has) becomes node affinity
  on GPU feature discovery's `nvidia.com/gpu.memory` label (MiB per GPU), with the cluster's
  `reserved_memory_mb` on top. Other estimates are left out on purpose: they depend on which model
  files the rendering machine holds, and the output must be the same on every machine.
- **The gateway.** The OpenAI-compatible gateway runs there too (gateway.py: a Deployment of
  the reconciler's image, a Service, the routes ConfigMap, a headless Service per model whose
  addresses are its ready pods), so aliases, fallbacks, remote models, overflow, keys and
  request metrics carry over.
- **Not carried over.** A GPU pin (`gpu_devices`) and `activation: on_demand` with its
  `idle_timeout_s` (the gateway of `run` asks its daemon to start those models) have no
  Kubernetes equivalent; without the gateway (`render` without `routes_file`) neither have a
  fallback and `aliases`: each is named in an annotation, a comment and the command's notes,
  never silently dropped. `replicas` is the Deployment's replicas (Kubernetes
  spreads and replaces the pods; the Service balances over them).
- **Source.** `reconciler.io/source-revision` is the commit when rendering a revision (`--rev`),
  `working-tree` otherwise: output committed together with its specs cannot name its own commit
  (Argo CD and Flux show the commit they synced).
- **Determinism.** Keys are sorted, lists are in a fixed order and ruamel writes the YAML with
  fixed settings (output.py), so rendering an unchanged spec is a no-op diff.

Modules: pods (model path in the pod, the engine container), objects (Deployment, Service,
PriorityClass), gateway (the gateway's objects), manifests (the whole output, problems located
as file:line, YAML, the output directory).
"""

from reconciler.kubernetes.gateway import RoutesFile
from reconciler.kubernetes.manifests import (
    GATEWAY_FILE,
    GENERATED,
    KUSTOMIZATION,
    PRIORITY_CLASSES,
    ForeignFileError,
    Rendered,
    RenderProblem,
    memory_requirements,
    render,
    render_loaded,
    source_files,
    stale_files,
    write_rendered,
    yaml_file,
)
from reconciler.kubernetes.objects import (
    ANNOTATION_ACTIVATION,
    ANNOTATION_ALIASES,
    ANNOTATION_FALLBACK,
    ANNOTATION_NAME,
    ANNOTATION_PIN,
    ANNOTATION_REVISION,
    ANNOTATION_SOURCE_FILE,
    LABEL_FRAMEWORK,
    LABEL_MODEL,
    LABEL_SPEC_HASH,
    priority_class_name,
    priority_value,
)
from reconciler.kubernetes.pods import ModelPathError, PodModel, pod_model

__all__ = [
    "ANNOTATION_ACTIVATION",
    "ANNOTATION_ALIASES",
    "ANNOTATION_FALLBACK",
    "ANNOTATION_NAME",
    "ANNOTATION_PIN",
    "ANNOTATION_REVISION",
    "ANNOTATION_SOURCE_FILE",
    "GATEWAY_FILE",
    "GENERATED",
    "KUSTOMIZATION",
    "LABEL_FRAMEWORK",
    "LABEL_MODEL",
    "LABEL_SPEC_HASH",
    "PRIORITY_CLASSES",
    "ForeignFileError",
    "ModelPathError",
    "PodModel",
    "RenderProblem",
    "Rendered",
    "RoutesFile",
    "memory_requirements",
    "pod_model",
    "priority_class_name",
    "priority_value",
    "render",
    "render_loaded",
    "source_files",
    "stale_files",
    "write_rendered",
    "yaml_file",
]

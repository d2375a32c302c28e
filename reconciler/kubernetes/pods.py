"""The pod of one model: where it finds its model, and its engine container.

Everything engine-specific comes from the engine's descriptor (reconciler.engines.registry):
the argv builder, the image and launcher (cluster.yaml `kubernetes.<framework>` overrides them
where that section exists), the environment names it reserves, whether the argv is the
container's command or arguments to the image's ENTRYPOINT, and whether it needs /dev/shm.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass

from reconciler.core.cluster import KubernetesSpec
from reconciler.core.spec import HealthCheck, ModelSpec
from reconciler.engines.base import EngineDescriptor, EnginePlacement
from reconciler.engines.registry import descriptor
from reconciler.model_files import facts as modelfiles

GPU_RESOURCE = "nvidia.com/gpu"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # GPU feature discovery: MiB per GPU of the node
CONTAINER = "engine"
PORT_NAME = "http"
MODELS_VOLUME = "models"
SHM_VOLUME = "dshm"
POD_HOST = "0.0.0.0"  # inside its pod an engine listens on the pod's interfaces


class ModelPathError(ValueError):
    """A model_path that a pod cannot see."""


@dataclass(frozen=True)
class PodModel:
    """The model_path the engine is given in the pod, and whether it lives in the volume."""

    path: str
    mounted: bool


def pod_model(spec: ModelSpec, kube: KubernetesSpec) -> PodModel:
    """Where the pod finds the model; ModelPathError when it cannot.

    In order: an explicit `kubernetes.model_paths` entry; a packaged model at
    `<module>/<file>` (the layout of the reconciler's model cache, so the cache can be copied onto
    the volume); a hub id as written, for engines that download (vLLM...); an absolute path below
    `models_root` at the same place below the mount; a path elsewhere inside a container image.
    """
    d = descriptor(spec.framework)
    volume = kube.model_volume
    explicit = kube.model_paths.get(spec.id)
    if explicit is not None:
        return PodModel(_below(volume.mount_path, explicit), True)
    if modelfiles.is_packaged(spec.model_path):
        return PodModel(_below(volume.mount_path, _packaged_file(spec.model_path)), True)
    if d.hub_ids and not modelfiles.is_local_path(spec.model_path):
        return PodModel(spec.model_path, False)
    relative = _relative_to(spec.model_path, volume.models_root)
    if relative is not None:
        return PodModel(_below(volume.mount_path, relative), True)
    if d.model_files == "none":
        return PodModel(spec.model_path, False)
    raise ModelPathError(
        f"{spec.model_path} is not below kubernetes.model_volume.models_root "
        f"({volume.models_root}), so no pod can see it: move it there or set "
        f"kubernetes.model_paths.{spec.id}"
    )


def _packaged_file(model_path: str) -> str:
    try:
        path = modelfiles.resolve(model_path, assemble=False)
    except modelfiles.ModelFileError as exc:
        raise ModelPathError(f"{exc}; or set kubernetes.model_paths for this model") from exc
    return f"{path.parent.name}/{path.name}"


def _relative_to(path: str, root: str) -> str | None:
    if not path.startswith("/"):
        return None
    normal, base = posixpath.normpath(path), posixpath.normpath(root)
    if base == "/":
        return normal.lstrip("/") or None
    return normal[len(base) + 1 :] if normal.startswith(base + "/") else None


def _below(mount: str, relative: str) -> str:
    joined = posixpath.normpath(posixpath.join(mount, relative))
    if _relative_to(joined, mount) is None:
        raise ModelPathError(f"{relative!r} leaves the model volume")
    return joined


# ---- the container --------------------------------------------------------------------------


def image_and_launcher(d: EngineDescriptor, kube: KubernetesSpec) -> tuple[str, tuple[str, ...]]:
    """The descriptor's image and launcher, or cluster.yaml's `kubernetes.<framework>` ones."""
    override = getattr(kube, d.framework, None) if d.framework in type(kube).model_fields else None
    if override is None:
        return d.kubernetes.image, d.kubernetes.launcher
    return override.image, (override.executable,)


def pod_env(spec: ModelSpec, d: EngineDescriptor, port: int) -> list[dict[str, str]]:
    """The spec's env (minus names the engine reads as its listen address or port) and what the
    engine needs besides, sorted by name. Host markers and CUDA_VISIBLE_DEVICES mean nothing in
    a pod (the device plugin hands out GPUs)."""
    env = {k: v for k, v in spec.env.items() if _pod_meaningful(k, d)}
    if d.extra_env is not None:
        env.update(d.extra_env(spec, _placement(spec, port)))
    return [{"name": k, "value": env[k]} for k in sorted(env)]


def _pod_meaningful(name: str, d: EngineDescriptor) -> bool:
    host_only = name.startswith("RECONCILER_") or name == "CUDA_VISIBLE_DEVICES"
    return not host_only and name.upper() not in d.reserved_env


def _placement(spec: ModelSpec, port: int) -> EnginePlacement:
    count = spec.resource_requirements.gpu_count
    return EnginePlacement(gpus=tuple(range(count)), port=port, host=POD_HOST)


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def probes(health: HealthCheck, path: str) -> dict[str, dict[str, object]]:
    """Readiness, liveness and startup probes with the spec's period, timeout and threshold.

    The startup probe allows `startup_timeout_s`; liveness only begins once it has passed, so a
    slow model load is not killed as unhealthy.
    """
    period = _seconds(health.interval_s)
    check = {"httpGet": {"path": path, "port": PORT_NAME}, "periodSeconds": period}
    check["timeoutSeconds"] = _seconds(health.timeout_s)
    steady = {**check, "failureThreshold": health.failure_threshold}
    startup = {**check, "failureThreshold": math.ceil(health.startup_timeout_s / period)}
    return {"readinessProbe": steady, "livenessProbe": dict(steady), "startupProbe": startup}


def container_port(spec: ModelSpec, kube: KubernetesSpec) -> int:
    return spec.port if spec.port is not None else kube.container_port


def container(spec: ModelSpec, pod: PodModel, kube: KubernetesSpec) -> dict[str, object]:
    """The engine container (FlagValueError for a parameter value that would become a flag)."""
    d = descriptor(spec.framework)
    port = container_port(spec, kube)
    image, launcher = image_and_launcher(d, kube)
    placed = spec.model_copy(update={"model_path": pod.path})
    argv = d.argv(placed, _placement(spec, port), launcher)
    body: dict[str, object] = {
        "name": CONTAINER,
        "image": (spec.image or "") if d.needs_image else image,
        "ports": [{"name": PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        **probes(spec.health_check, spec.health_check.path),
    }
    env = pod_env(placed, d, port)
    if env:  # omitted when empty: the API server drops it, and a GitOps diff must match
        body["env"] = env
    if d.kubernetes.argv_is_command:
        body["command"] = argv
    elif argv:  # like the Docker engine: arguments to the image's ENTRYPOINT
        body["args"] = argv
    count = spec.resource_requirements.gpu_count
    if count:
        # a string: quantities come back from the API server as strings, and must compare equal
        body["resources"] = {"limits": {GPU_RESOURCE: str(count)}}
    mounts = []
    if pod.mounted:
        mount = kube.model_volume.mount_path
        mounts.append({"name": MODELS_VOLUME, "mountPath": mount, "readOnly": True})
    if d.kubernetes.shared_memory:  # tensor-parallel workers share memory through /dev/shm
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    if mounts:
        body["volumeMounts"] = mounts
    return body


def volumes(spec: ModelSpec, pod: PodModel, kube: KubernetesSpec) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    if pod.mounted:
        volume = kube.model_volume
        source: dict[str, dict[str, str | bool | None]]
        if volume.type == "hostPath":
            source = {"hostPath": {"path": volume.host_path, "type": "Directory"}}
        else:
            source = {"persistentVolumeClaim": {"claimName": volume.claim_name, "readOnly": True}}
        found.append({"name": MODELS_VOLUME, **source})
    if descriptor(spec.framework).kubernetes.shared_memory:
        found.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}})
    return found


def gpu_memory_affinity(need_mb: int) -> dict[str, object]:
    """Only nodes whose GPUs have at least `need_mb` MiB (`Gt` is strict, hence need - 1)."""
    expression = {"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(need_mb - 1)]}
    terms = [{"matchExpressions": [expression]}]
    required = {"nodeSelectorTerms": terms}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}

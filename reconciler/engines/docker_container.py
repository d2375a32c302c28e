"""Docker engine: one container per model, found again through its labels.

Choices an operator should know about:

- **Identity.** A container is named `reconciler-<namespace>-<model id>` and labelled
  `reconciler.managed=true`, `reconciler.namespace`, `reconciler.model`, `reconciler.spec-hash`,
  `reconciler.port`, `reconciler.gpus` (`0,1`), `reconciler.memory-mb` and `reconciler.started-at`
  (Unix time). `observe()` lists containers by the managed and namespace labels, so a restarted
  reconciler adopts its containers. A container without both labels is never stopped, removed or
  listed, even when its name collides with ours or a handle points at it.
- **Port.** The placement's port is both the container port and the host port, published on
  `publish_host` (127.0.0.1 by default) only. The container gets `PORT=<port>` in its environment
  and must listen on it on all of its own interfaces (inside its network namespace).
- **Environment and arguments.** env = the spec's `env`, then `PORT` and `MODEL_PATH` (ours
  win: the published port must be the one the engine listens on; a spec may not set them). The
  spec's `parameters` become the container's command (`--key value`, `true` -> `--key`,
  `false` -> omitted, a list repeats the flag); they replace the image's CMD and are appended
  to its ENTRYPOINT. Keys are passed through unchecked: a container defines its own arguments;
  values that start with `-` are refused. No shell is involved anywhere. The runtime half (the
  Docker SDK) is docker_runtime.py.
- **Model files.** A `model_path` that is an absolute path existing on this host is bind-mounted
  read-only at the same path, but only below a model root the host declares
  (`RECONCILER_MODEL_ROOTS`, colon-separated; specs come from git, the roots from the host), and
  never the Docker socket or a system path (/, /etc, /proc, /sys, /dev, /run, /var/run, /boot,
  /root, /var/lib/docker...): anything else is an EngineError naming the path and the setting.
  Symlinks are resolved before the check. Any other model_path (a path inside the image, a hub
  id) is only passed as `MODEL_PATH`.
- **GPUs.** Placed GPUs are requested with an nvidia `DeviceRequest` only when the daemon has an
  nvidia runtime (`docker info` -> Runtimes). Without one (CPU hosts, CI) the request is skipped,
  a warning is logged and the label `reconciler.gpu-request` says so; the GPUs stay reserved in the
  labels so that the planner's bookkeeping does not change.
- **Lifecycle.** restart policy `no` (the reconciler restarts, with its backoff), `init=True` (the
  daemon's tiny init is PID 1: it forwards SIGTERM so `stop(grace_s)` is graceful, and reaps
  zombies). `stop()` removes the container and its anonymous volumes. `start()` replaces a dead
  container of ours with the same name, and refuses to start a model that already runs.
- **Images.** A missing image is pulled once, bounded by `pull_timeout_s`; a failure or a timeout
  is an `EngineError` (the pull may go on in the daemon; a later start finds the image).
- **No daemon.** A daemon that does not answer is not fatal: `start()` and `stop()` raise
  `EngineError("Docker engine not reachable at ...: ...")`, `observe()` and `logs()` return
  nothing, and `available` / `unavailable_reason` tell the controller why.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence

from reconciler.core.engine_args import FlagStyle, render_flags
from reconciler.core.spec import ModelSpec, ParameterValue
from reconciler.engines.base import (
    EngineError,
    EnginePlacement,
)

LABEL_MANAGED = "reconciler.managed"
LABEL_NAMESPACE = "reconciler.namespace"
LABEL_MODEL = "reconciler.model"
LABEL_HASH = "reconciler.spec-hash"
LABEL_PORT = "reconciler.port"
LABEL_GPUS = "reconciler.gpus"
LABEL_MEMORY = "reconciler.memory-mb"
LABEL_STARTED = "reconciler.started-at"
LABEL_GPU_REQUEST = "reconciler.gpu-request"

# The namespace becomes part of container names and label filters: keep it a DNS label.
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

ENV_MODEL_ROOTS = "RECONCILER_MODEL_ROOTS"
"""Host setting: the directories (colon-separated) below which model files may be mounted."""

# Never mounted, even below a declared root: the host's own configuration, kernel interfaces,
# devices, runtime sockets (/run/docker.sock), boot files, root's home and Docker's own state.
SYSTEM_PATHS = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/run",
    "/boot",
    "/root",
    "/var/lib/docker",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
)

RESERVED_ENV = frozenset({"PORT", "MODEL_PATH"})
STYLE = FlagStyle(sort_keys=False, bool_switches=True)


def container_name(namespace: str, model_id: str) -> str:
    return f"reconciler-{namespace}-{model_id}"


def render_parameters(parameters: Mapping[str, ParameterValue]) -> list[str]:
    """Spec parameters as arguments: `--key value`, `true` -> `--key`, `false` -> nothing,
    a list repeats the flag. Order follows the spec, so the command is stable."""
    return render_flags(parameters, STYLE)


def container_env(spec: ModelSpec, placement: EnginePlacement) -> dict[str, str]:
    """The spec's env, then PORT and MODEL_PATH (ours win)."""
    return {**spec.env, **own_env(spec, placement)}


def own_env(spec: ModelSpec, placement: EnginePlacement) -> dict[str, str]:
    """What the container learns from the reconciler: its port and its model."""
    return {"PORT": str(placement.port), "MODEL_PATH": spec.model_path}


def docker_argv(
    spec: ModelSpec, placement: EnginePlacement, launcher: tuple[str, ...]
) -> list[str]:
    """Pure: the container's arguments (to its image's ENTRYPOINT); no launcher of ours."""
    return [*launcher, *render_parameters(spec.parameters)]


def model_roots(environ: Mapping[str, str] | None = None) -> list[str]:
    """The host's declared model roots ($RECONCILER_MODEL_ROOTS), resolved."""
    environ = os.environ if environ is None else environ
    parts = environ.get(ENV_MODEL_ROOTS, "").split(":")
    return [os.path.realpath(p) for p in parts if p.strip() and os.path.isabs(p.strip())]


def model_mounts(model_path: str, roots: Sequence[str] | None = None) -> list[str]:
    """Host paths to bind read-only at the same place: the model when it is a file or directory
    on this host below a model root; [] when model_path is not on this host (inside the image).
    EngineError when it is on this host but may not be mounted."""
    if not os.path.isabs(model_path) or not os.path.lexists(model_path):
        return []
    real = os.path.realpath(model_path)
    shown = model_path if real == model_path else f"{model_path} (-> {real})"
    refused = _system_path(real)
    if refused:
        raise EngineError(
            f"model_path {shown} is {refused}: the Docker engine never mounts it; put the model "
            f"below a directory in {ENV_MODEL_ROOTS}"
        )
    declared = model_roots() if roots is None else [os.path.realpath(r) for r in roots]
    if not any(real == root or real.startswith(root.rstrip("/") + "/") for root in declared):
        have = ":".join(declared) or "unset"
        raise EngineError(
            f"model_path {shown} is not below a model root of this host ({ENV_MODEL_ROOTS}: "
            f"{have}); the host's operator must add its directory to {ENV_MODEL_ROOTS}"
        )
    for root in declared:
        if _system_path(root):
            raise EngineError(f"{ENV_MODEL_ROOTS} entry {root} is {_system_path(root)}")
    return [real]


def _system_path(path: str) -> str | None:
    """Why `path` may never be mounted, or None."""
    if path == "/":
        return "the root directory"
    for system in SYSTEM_PATHS:
        if path == system or path.startswith(system + "/"):
            return f"a system path ({system})"
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            return "a socket"
    except OSError:
        pass
    return None


def has_nvidia_runtime(info: Mapping[str, object]) -> bool:
    """Whether `docker info` lists an nvidia runtime (nvidia-container-toolkit configured)."""
    runtimes = info.get("Runtimes")
    return isinstance(runtimes, Mapping) and any("nvidia" in str(name) for name in runtimes)


def parse_gpus(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip().isdigit())


def int_label(labels: Mapping[str, str], key: str) -> int:
    try:
        return int(labels.get(key, "0"))
    except ValueError:
        return 0


def float_label(labels: Mapping[str, str], key: str) -> float:
    try:
        return float(labels.get(key, "0"))
    except ValueError:
        return 0.0

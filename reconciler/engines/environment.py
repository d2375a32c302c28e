"""What an engine process inherits from the host: a short allow list, nothing else.

An engine runs whatever a spec author chose (an image, a flag, a model's own code), so it must not
see the daemon's secrets: the API token, the gateway keys, the SMTP password, or any other
variable of the operator's environment file. A deny list misses the next secret someone adds; an
allow list does not. Engines get the variables a process needs to run and to find its GPUs and
model cache (below), then the spec's `env`, then the reconciler's own values (GPUs, markers):
never a `RECONCILER_*` variable of the host, whatever the list says.

What is not here is missing on purpose: proxies (their URLs may carry a password), SSL and
credential files, PYTHON* settings. A spec that needs such a value sets it in its `env` (in git,
where a reviewer sees it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

PASS_THROUGH = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"}
)
"""Names a process needs to run: find executables and libraries, its home, time and locale."""
PASS_THROUGH_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "HF_")
"""Locale categories; the GPU stack's settings; the Hugging Face cache and hub settings, where
engines find (or fetch) model files (HF_TOKEN included: engines read gated models with it)."""
HOST_ONLY_PREFIX = "RECONCILER_"
"""The daemon's own settings and every secret git may name: never an engine's."""


def passes_through(name: str) -> bool:
    """True when an engine inherits the host's variable `name`."""
    if name.startswith(HOST_ONLY_PREFIX):
        return False
    return name in PASS_THROUGH or name.startswith(PASS_THROUGH_PREFIXES)


def inherited_env(environ: Mapping[str, str], dropped: Iterable[str] = ()) -> dict[str, str]:
    """The host variables an engine starts with; `dropped` (compared upper-case) are left out
    even when the list has them (e.g. names an engine reads as its listen address)."""
    drop = {name.upper() for name in dropped}
    return {k: v for k, v in environ.items() if passes_through(k) and k.upper() not in drop}

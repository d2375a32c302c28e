"""Cold start, as a client feels it: the first token from an idle on-demand model through the
gateway, against `reconciler apply`-to-first-token for the same spec, printed as a ratio.

- apply: `reconciler apply` of the spec (activation always), then a streaming completion
  straight to the engine; the clock runs from the command's start to the first token.
- on demand: `reconciler run` with the same spec as `activation: on_demand`; once the daemon has
  passed over it (not running), one streaming completion through the gateway; the clock runs
  from the request to the first token (queueing, the pass, the start, the load, the answer).

Engines: the real llama.cpp engine with the packaged Gemma 3 270M on the CPU (`--engine gemma`,
the default), or the vLLM stand-in (`--engine stand-in`: measures the reconciler's own part,
since the stand-in loads in no time). Run from tests/bench/gateway.py, or alone:

    .venv/bin/python tests/bench/gateway_cold.py [--engine gemma|stand-in] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]

from apply_support import gemma, managed_host, stand_in, wait_for  # noqa: E402
from daemon_support import running_daemon  # noqa: E402

GPU = [{"index": 0, "name": "Simulated", "memory_mb": 8000}]
BODY = {"prompt": "The colour of the sky is", "max_tokens": 8, "stream": True}


def spec_for(engine: str, **fields: Any) -> dict[str, Any]:
    if engine == "gemma":
        return gemma("cold", **fields)
    return stand_in("cold", **fields)


def first_token(url: str, model: str, timeout_s: float = 600) -> float:
    """Seconds from sending a streaming completion to its first data chunk (the stand-in does
    not stream: to its whole answer, which is one chunk)."""
    began = time.perf_counter()
    body = {**BODY, "model": model}
    with httpx.stream("POST", f"{url}/completions", json=body, timeout=timeout_s) as response:
        response.raise_for_status()
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
            return time.perf_counter() - began
        for line in response.iter_lines():
            if line.startswith("data:") and "[DONE]" not in line:
                return time.perf_counter() - began
    raise RuntimeError("the stream ended without a token")


def listed_status(url: str) -> str | None:
    try:
        listed = httpx.get(f"{url}/models", timeout=5).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return next((m.get("status") for m in listed if m["id"] == "cold"), None)


def apply_to_first_token(root: Path, engine: str) -> float:
    with managed_host(root) as host:
        host.write_cluster(GPU)
        host.write_model(spec_for(engine))
        began = time.perf_counter()
        host.apply(timeout=600)
        port = host.port("cold")
        first_token(f"http://127.0.0.1:{port}/v1", "cold")
        return time.perf_counter() - began


def on_demand_first_token(root: Path, engine: str) -> float:
    spec = spec_for(engine, activation="on_demand", idle_timeout_s=600)
    with running_daemon(root, [spec], gpus=GPU) as daemon:
        daemon.wait_ready(60)
        assert wait_for(lambda: listed_status(daemon.gateway_url) == "cold", 60, 0.1)
        assert daemon.statuses().get("cold", "stopped") == "stopped", daemon.statuses()
        return first_token(daemon.gateway_url, "cold")


def measure(engine: str, repeat: int) -> tuple[float, float]:
    applied, demanded = [], []
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        for i in range(repeat):
            applied.append(apply_to_first_token(Path(tmp) / f"apply-{i}", engine))
            demanded.append(on_demand_first_token(Path(tmp) / f"demand-{i}", engine))
            print(
                f"  cold start {i + 1}/{repeat}: apply {applied[-1]:.2f} s, "
                f"on demand {demanded[-1]:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    return statistics.median(applied), statistics.median(demanded)


def report(engine: str, repeat: int) -> None:
    applied, demanded = measure(engine, repeat)
    print(f"\nCold start ({engine}, median of {repeat}):")
    print(f"  apply -> first token (direct to the engine)     {applied:8.2f} s")
    print(f"  idle on-demand -> first token (through gateway) {demanded:8.2f} s")
    print(f"  ratio on demand / apply                         {demanded / applied:8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("gemma", "stand-in"), default="gemma")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    report(args.engine, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

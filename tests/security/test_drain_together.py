"""The engines one pass stops are drained together: the pass waits for the slowest drain, not
for the sum of them.

A real `reconciler run` with its gateway and two stand-in vLLM engines that hold every streamed
answer after its first chunk (FAKE_VLLM_STREAM_GATE, never opened here), with
`gateway.drain_timeout_s` of 20 s. A client holds one answer from each engine; one commit then
changes both specs. Both engines wait out the drain, and are stopped together when it ends:
drained one after another, the second would go 20 s after the first.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from apply_support import Host, managed_host, stand_in, wait_for
from daemon_support import Daemon, commit, free_port, init_repo
from gitops_support import spec_hash

DRAIN_S = 20.0
APART_AT_MOST_S = 10.0
"""both stop right after the one drain (their SIGTERMs a moment apart); drained one after the
other, their stops would be DRAIN_S apart"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path / "site") as host:
        host.write_cluster([{"index": 0, "memory_mb": 8000}, {"index": 1, "memory_mb": 8000}])
        cluster = json.loads((host.desired / "cluster.yaml").read_text())
        cluster["gateway"] = {"drain_timeout_s": DRAIN_S}
        (host.desired / "cluster.yaml").write_text(json.dumps(cluster))
        yield host


def hold_answer(daemon: Daemon, model: str, first_chunk: threading.Event) -> None:
    """A streamed answer that the engine holds after its first chunk, until the engine goes."""
    body = {"model": model, "prompt": "hello", "max_tokens": 8, "stream": True}
    url = f"{daemon.gateway_url}/completions"
    try:
        with httpx.stream("POST", url, json=body, timeout=120) as response:
            for _ in response.iter_bytes():
                first_chunk.set()
    except httpx.HTTPError:
        pass  # cut when its engine stops: what a drain that ran out of time leaves


def stopped_at(pid: int) -> float | None:
    """The time the process is gone (polled), None while it runs."""
    try:
        return None if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else time.monotonic()
    except psutil.NoSuchProcess:
        return time.monotonic()


def test_the_drains_of_one_pass_run_together(host: Host) -> None:
    gate = host.root / "never-opened"
    specs = {m: stand_in(m, env={"FAKE_VLLM_STREAM_GATE": str(gate)}) for m in ("alpha", "beta")}
    for spec in specs.values():
        host.write_model(spec)
    init_repo(host)
    daemon = Daemon(host, free_port(), None, None, extra_args=("--resync", "3600"))
    daemon.start()
    try:
        daemon.wait_statuses({"alpha": "running", "beta": "running"})
        pids = {m: host.pid(m) for m in specs}
        clients = []
        for model in specs:
            first = threading.Event()
            thread = threading.Thread(target=hold_answer, args=(daemon, model, first), daemon=True)
            thread.start()
            assert first.wait(30), f"no first chunk from {model}\n{daemon.log()}"
            clients.append(thread)

        for model in specs:
            specs[model] = stand_in(
                model, env=specs[model]["env"], parameters={"max-model-len": 2048}
            )
            host.write_model(specs[model])
        began = time.monotonic()
        commit(host, "alpha and beta: longer context")

        gone: dict[str, float] = {}

        def both_gone() -> bool:
            for model, pid in pids.items():
                if model not in gone and (at := stopped_at(pid)) is not None:
                    gone[model] = at
            return len(gone) == 2

        assert wait_for(both_gone, DRAIN_S * 3 + 30, 0.05), f"{gone}\n{daemon.log()}"
        first, last = sorted(gone.values())
        print(
            f"stopped {first - began:.1f} s and {last - began:.1f} s after the commit "
            f"(drain_timeout_s {DRAIN_S:g})"
        )
        assert first - began >= DRAIN_S * 0.9, "an engine was stopped before its drain ran out"
        assert last - first <= APART_AT_MOST_S, "the drains ran one after another"
        wanted = {m: spec_hash(s) for m, s in specs.items()}

        def restarted_as_committed() -> bool:
            # the old engines read "running" until the pass that stopped them writes its record
            running = daemon.statuses() == {"alpha": "running", "beta": "running"}
            return running and {m: host.model(m).spec_hash for m in specs} == wanted

        assert wait_for(restarted_as_committed, 60, 0.2), (
            f"{ {m: host.model(m).spec_hash for m in specs} } != {wanted}\n{daemon.log()}"
        )
        for thread in clients:
            thread.join(30)
    finally:
        daemon.stop()

"""Start errors that retrying cannot fix, through `reconciler apply` with real processes.

A missing executable, a missing model file and a port that something else holds are final: the
model is in `error` at once (no startup timeout waited out, no restart, no backoff), and its
fallback starts in the same run. Nothing is spawned for the failed model, and a later apply does
not try it again until the operator changes something.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apply_support import Host, managed_host, running, stand_in

from reconciler.core.instance import Status

# a startup timeout far beyond apply's --timeout: waiting it out would fail the run
NEVER_READY = {"health_check": {"path": "/health", "interval_s": 1, "startup_timeout_s": 3600}}


@dataclass
class Case:
    primary: Callable[[Host, list[socket.socket]], dict[str, Any]]
    """the failing model's spec, given the host and a list to keep open sockets in"""
    message: str
    """what the error says (substring)"""


def missing_executable(host: Host, held: list[socket.socket]) -> dict[str, Any]:
    host.env["RECONCILER_LLAMA_SERVER"] = str(host.root / "not-installed" / "llama-server")
    model = host.root / "tiny.gguf"
    model.write_bytes(b"GGUF")
    spec = stand_in("primary", framework="llama_cpp", model_path=str(model), **NEVER_READY)
    return {**spec, "parameters": {"ctx-size": 512}}  # vLLM's flags are not llama.cpp's


def missing_model_file(host: Host, held: list[socket.socket]) -> dict[str, Any]:
    return stand_in("primary", model_path=str(host.root / "models" / "gone"), **NEVER_READY)


def port_in_use(host: Host, held: list[socket.socket]) -> dict[str, Any]:
    taken = socket.socket()
    held.append(taken)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return stand_in("primary", port=taken.getsockname()[1], **NEVER_READY)


CASES = {
    "missing executable": Case(missing_executable, "not-installed/llama-server"),
    "missing model file": Case(missing_model_file, "models/gone"),
    "port in use": Case(port_in_use, "already in use"),
}


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path) as host:
        yield host


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_final_start_error_is_an_error_at_once_and_the_fallback_starts(
    host: Host, held: list[socket.socket], case: Case
) -> None:
    host.write_model({**case.primary(host, held), "priority": 7, "fallback": "light"})
    host.write_model(stand_in("light", priority=3, enabled=False))

    result = host.apply(timeout=120, expect=1)
    errors = [line for line in result.actions if line.startswith("error primary: ")]
    assert len(errors) == 1 and case.message in errors[0], result
    assert any(a.startswith("start light: fallback for primary") for a in result.actions), result

    primary = host.model("primary")
    assert primary.status == Status.error, primary
    assert primary.given_up, "a final error is not retried"
    assert primary.restarts_total == 0 and primary.next_retry_at is None, primary
    assert case.message in (primary.last_error or ""), primary
    assert "primary" not in host.engines(), "nothing was spawned for the failed model"
    kinds = [e["kind"] for e in host.events(model="primary")]
    assert kinds.count("error") == 1 and not {"start", "restart", "crashed"} & set(kinds), kinds
    running(host, "light")

    # a later run does not retry it: nothing changed that could make it start
    light_pid = host.pid("light")
    again = host.apply(timeout=120, expect=1)
    assert not any(line.endswith(" primary") or " primary:" in line for line in again.actions), (
        again
    )
    kinds = [e["kind"] for e in host.events(model="primary")]
    assert kinds.count("error") == 1 and not {"start", "restart", "crashed"} & set(kinds), kinds
    assert host.pid("light") == light_pid

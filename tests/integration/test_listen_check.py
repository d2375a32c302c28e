"""Engines listen where the host says: the reconciler looks at the sockets, not at the argv.

The engine here is tests/fakes/fake_rogue.py run as `vllm`: it behaves unless its environment
moves it (another address, another port, an extra socket, a child that listens), as real engines
are moved by settings they read. Whatever moved it, the engine is stopped and its model is
`error` with where it listened; the well-behaved model beside it runs on. Servers here bind
loopback addresses only (127.0.0.2 stands in for "another address").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from apply_support import (
    FAKE_ROGUE,
    Host,
    managed_host,
    running,
    stand_in,
    vllm_wrapper,
    wait_for,
)

from reconciler.core.instance import Status
from reconciler.engines.holdings import Listener, listeners, violation


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path) as host:
        host.env["RECONCILER_VLLM"] = str(vllm_wrapper(tmp_path / "rogue-bin", FAKE_ROGUE))
        yield host


CASES = {
    "extra socket": ({"FAKE_ROGUE_EXTRA": "127.0.0.1:{other}"}, "127.0.0.1:{other}"),
    "another address": ({"FAKE_ROGUE_HOST": "127.0.0.2"}, "127.0.0.2:{port}"),
    "another port": ({"FAKE_ROGUE_PORT": "{other}"}, "127.0.0.1:{other}"),
    "a child listens": ({"FAKE_ROGUE_CHILD": "127.0.0.1:{other}"}, "127.0.0.1:{other}"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_engine_listening_elsewhere_is_stopped_and_in_error(host: Host, case: str) -> None:
    first, last = host.port_range
    port, good_port, other = first, first + 1, last
    env_template, where_template = CASES[case]
    env = {k: v.format(port=port, other=other) for k, v in env_template.items()}
    where = where_template.format(port=port, other=other)
    host.write_model(stand_in("rogue", port=port, env=env))
    host.write_model(stand_in("good", port=good_port))

    result = host.apply(timeout=120, expect=1)

    reason = f"listening on {where}, expected 127.0.0.1:{port}"
    assert f"error: rogue: {reason}" in result.stderr, result
    model = host.model("rogue")
    assert (model.status, model.last_error, model.given_up) == (Status.error, reason, True)
    assert "rogue" not in host.engines(), "the misplaced engine was left running"
    assert wait_for(lambda: not (listeners_of(host) & {other, port}), timeout_s=15)
    running(host, "good")

    # stopped for good: the next apply does not start it again (its spec would do the same)
    again = host.apply(expect=1)
    assert "nothing to do" in again.stdout, again
    assert "rogue" not in host.engines()
    assert len(host.events("error", "rogue")) == 1
    assert len(host.events("start", "rogue")) == 1


def test_a_model_that_listens_where_told_passes_the_check(host: Host) -> None:
    host.write_model(stand_in("good"))
    host.apply()
    running(host, "good")
    pid, port = host.pid("good"), host.port("good")
    assert listeners(pid) == {Listener("127.0.0.1", port)}
    assert host.events("error") == []


def listeners_of(host: Host) -> set[int]:
    """Ports that the engine processes of this host listen on now."""
    found = set()
    for pids in host.engines().values():
        for pid in pids:
            found |= {s.port for s in listeners(pid) or ()}
    return found


# -- the rule itself, for addresses tests must not bind ---------------------------------------


@pytest.mark.parametrize(
    ("found", "host", "expected"),
    [
        ([("127.0.0.1", 8000)], "127.0.0.1", None),
        ([("::ffff:127.0.0.1", 8000)], "127.0.0.1", None),
        ([("0.0.0.0", 8000)], "127.0.0.1", "listening on 0.0.0.0:8000, expected 127.0.0.1:8000"),
        ([("0.0.0.0", 18777)], "127.0.0.1", "listening on 0.0.0.0:18777, expected 127.0.0.1:8000"),
        ([("::", 8000)], "127.0.0.1", "listening on [::]:8000, expected 127.0.0.1:8000"),
        (
            [("127.0.0.1", 8000), ("0.0.0.0", 9), ("10.0.0.5", 8000)],
            "127.0.0.1",
            "listening on 0.0.0.0:9, 10.0.0.5:8000, expected 127.0.0.1:8000",
        ),
        ([("0.0.0.0", 8000)], "0.0.0.0", None),
        ([("10.0.0.5", 8000)], "0.0.0.0", None),
        ([("0.0.0.0", 8001)], "0.0.0.0", "listening on 0.0.0.0:8001, expected 0.0.0.0:8000"),
        ([("::1", 8000)], "localhost", None),
        ([], "127.0.0.1", None),
    ],
)
def test_the_listen_rule(found: list[tuple[str, int]], host: str, expected: str | None) -> None:
    assert violation([Listener(a, p) for a, p in found], host, 8000) == expected

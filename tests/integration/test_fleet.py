"""A fleet from one repository, end to end: two real `reconciler run` processes on this machine
as hosts `a` and `b` (fleet_support.py: one git repository with hosts/a.yaml and hosts/b.yaml,
each host its own state directory, ports, gateway and client key; the fleet key between them).

What is checked is what an operator and a client notice: each host starts only the engines its
specs name, a model on one host is answered through the other host's gateway (by id and by
alias, streamed too) and `X-Reconciler-Host` names the host that answered, the hosts send each
other the fleet key and never a client's, a model on both hosts is served by both through
either gateway, a forwarded request is never forwarded again, every gateway lists the whole fleet
with where each model runs, and when host b goes away a's gateway answers b's models at once:
503 with Retry-After, or the fallback on a, while a's own models keep answering from the same
engine processes.

One fleet serves the module (starting two daemons costs seconds on a shared 2-core host); the
test that stops host b is the last one to use it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from apply_support import stand_in, wait_for
from cli_support import readme_plan_matches
from fleet_support import FLEET_KEY, Fleet, FleetHost, running_fleet

REPO = Path(__file__).resolve().parents[2]
README_SECTION = "### 2. Several hosts from one repository"
ASKED = 12
"""requests per gateway to the model on both hosts (round-robin among equally idle instances)"""


def models() -> list[dict]:
    return [
        stand_in("alpha", hosts=["a"]),
        stand_in("bravo", hosts=["b"], aliases=["bravo-chat"]),
        # served by its fallback on host a once host b is gone
        stand_in("delta", hosts=["b"], fallback="alpha"),
        stand_in("both", hosts=["a", "b"], routing="least_outstanding"),
    ]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("fleet"), ["a", "b"], models()) as fleet:
        fleet["a"].daemon.wait_statuses({"alpha": "running", "both": "running"}, timeout_s=60)
        fleet["b"].daemon.wait_statuses(
            {"bravo": "running", "delta": "running", "both": "running"}, timeout_s=60
        )
        # each gateway probes the other every few seconds: a started before b was there
        for here, model in (("a", "bravo"), ("b", "alpha")):
            assert answers(fleet[here], model), f"{here}: {model}\n{fleet[here].daemon.log()}"
        yield fleet


def answers(member: FleetHost, model: str) -> bool:
    return bool(wait_for(lambda: member.post(model).status_code == 200, 60, 0.2))


def tag() -> str:
    return f"tag-{uuid.uuid4().hex[:12]}"


def answered_by(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 200, response.text
    return response.headers["x-reconciler-host"], response.headers["x-reconciler-model"]


def test_each_host_starts_only_the_engines_its_specs_name(fleet: Fleet) -> None:
    expected = {"a": {"alpha", "both"}, "b": {"bravo", "delta", "both"}}
    for name, member in fleet.hosts.items():
        assert set(member.host.engines()) == expected[name]
        assert set(member.host.state().models) == expected[name]
        assert set(member.daemon.statuses()) == expected[name]
        status = member.host.cli("status")
        assert status.returncode == 0, str(status)
        shown = {line.split()[1] for line in status.stdout.splitlines() if "running" in line}
        assert shown == expected[name], status.stdout


def test_a_model_on_one_host_is_answered_through_the_others_gateway(fleet: Fleet) -> None:
    assert answered_by(fleet["a"].post("bravo", tag())) == ("b", "bravo")
    assert answered_by(fleet["b"].post("alpha", tag())) == ("a", "alpha")
    # the model name goes as the client sent it: the host that runs it knows its aliases
    assert answered_by(fleet["a"].post("bravo-chat", tag())) == ("b", "bravo")
    # and a host's own models carry its name too
    assert answered_by(fleet["a"].post("alpha", tag())) == ("a", "alpha")


def test_a_forwarded_stream_arrives_chunk_by_chunk(fleet: Fleet) -> None:
    a = fleet["a"]
    client = openai.OpenAI(base_url=f"{a.gateway}/v1", api_key=a.key, max_retries=0, timeout=60)
    stream = client.chat.completions.with_raw_response.create(
        model="bravo", messages=[{"role": "user", "content": tag()}], stream=True
    )
    assert stream.headers["x-reconciler-host"] == "b"
    chunks = [c for c in stream.parse() if c.choices and c.choices[0].delta.content]
    assert len(chunks) > 1


def test_hosts_send_each_other_the_fleet_key_never_a_clients(fleet: Fleet) -> None:
    a, b = fleet["a"], fleet["b"]
    # a's client key is not a key of b's gateway ...
    assert b.post("bravo", key=a.key).status_code == 401
    before = accepted(b, "fleet")
    # ... yet a's client reaches bravo through a: a sent b the fleet key
    assert answered_by(a.post("bravo", tag())) == ("b", "bravo")
    assert accepted(b, "fleet") == before + 1
    assert a.post("bravo", key="sk-not-a-key-of-anyone-0123456789ab").status_code == 401


def accepted(member: FleetHost, key_name: str) -> float:
    """reconciler_gateway_key_requests_total of `key_name` on the host's gateway."""
    prefix = f'reconciler_gateway_key_requests_total{{key="{key_name}"}} '
    lines = [line for line in member.metrics().splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


@pytest.mark.parametrize("gateway", ["a", "b"])
def test_a_model_on_both_hosts_is_served_by_both_through_either_gateway(
    fleet: Fleet, gateway: str
) -> None:
    seen = [answered_by(fleet[gateway].post("both", tag())) for _ in range(ASKED)]
    assert {host for host, _ in seen} == {"a", "b"}, seen
    assert {model for _, model in seen} == {"both"}


def test_a_forwarded_request_is_never_forwarded_again(fleet: Fleet) -> None:
    # as if host a had forwarded a request for its own model to b: b has no alpha of its own,
    # and sends it nowhere (no loop between gateways)
    b = fleet["b"]
    looped = b.post("alpha", tag(), key=FLEET_KEY, **{"X-Reconciler-Forwarded": "a"})
    assert looped.status_code == 503, looped.text
    assert looped.headers.get("x-reconciler-host") != "a"
    # a model b runs itself is served there as usual
    served = b.post("bravo", tag(), key=FLEET_KEY, **{"X-Reconciler-Forwarded": "a"})
    assert answered_by(served) == ("b", "bravo")


def test_every_gateway_lists_the_whole_fleet_and_where_each_model_runs(fleet: Fleet) -> None:
    where = {"alpha": ["a"], "bravo": ["b"], "delta": ["b"], "both": ["a", "b"]}
    for member in fleet.hosts.values():
        listed = member.models()
        assert {i: sorted(listed[i]["hosts"]) for i in where} == where, listed
        assert "bravo-chat" in listed  # aliases are listed as everywhere else


def test_when_host_b_goes_away_as_gateway_answers_its_models_at_once(fleet: Fleet) -> None:
    a, b = fleet["a"], fleet["b"]
    assert answered_by(a.post("bravo", tag())) == ("b", "bravo")
    engines = a.host.engines()
    reported_before = len(unreachable_b(a))  # a started before b: it may have said so then
    b.daemon.stop()  # SIGTERM: b's daemon and its gateway go; its engines outlive it, unreachable
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{b.gateway}/healthz", timeout=5)
    # no probe has seen b down yet: the first request finds it refusing, before its first byte
    refused = a.post("bravo", tag())
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["retry-after"]) > 0
    assert refused.json()["error"]["message"]
    assert answered_by(a.post("delta", tag())) == ("a", "alpha")  # its fallback, on a
    both = [answered_by(a.post("both", tag())) for _ in range(ASKED)]
    assert set(both) == {("a", "both")}
    assert answered_by(a.post("alpha", tag())) == ("a", "alpha")
    # a's own engines are the same processes, still running
    assert a.host.engines() == engines
    assert a.daemon.statuses() == {"alpha": "running", "both": "running"}
    # and the operator reads it in a's event log
    assert wait_for(lambda: len(unreachable_b(a)) > reported_before, 60, 0.5), a.host.events()


def unreachable_b(member: FleetHost) -> list[dict]:
    return [e for e in member.host.events() if "host b: unreachable" in e["message"]]


def test_the_readmes_fleet_example_plans_as_the_readme_shows(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split(README_SECTION, 1)[1].split("\n### ", 1)[0]
    files = re.findall(r"```yaml\n# (desired-state/\S+\.yaml)\n(.*?)```", section, re.S)
    assert {name for name, _ in files} == {
        "desired-state/cluster.yaml",
        "desired-state/hosts/gpu-a.yaml",
        "desired-state/hosts/gpu-b.yaml",
        "desired-state/models/qwen2-7b.yaml",
        "desired-state/models/llama3-70b.yaml",
    }
    for name, body in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    # a reviewer's machine: none of the fleet's hosts, no state of its own
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_HOST_NAME"}
    readme_plan_matches(section, tmp_path, {**env, "RECONCILER_STATE_DIR": str(tmp_path / "state")})

"""The fleet's plan (core.plan.fleet_report): hosts in name order, what they share shown once,
a remote model's fallback duty gathered from every host, and a host not planned here said so."""

from __future__ import annotations

import json

from reconciler.core.desired import Problem
from reconciler.core.plan import Action, Plan, RemoteModel
from reconciler.core.plan.fleet_report import (
    FleetPlan,
    fleet_plan,
    render_fleet_json,
    render_fleet_markdown,
    render_fleet_text,
)
from reconciler.core.secrets import SecretUse

KEY = SecretUse("RECONCILER_SECRET_K", "api.example.com", 'key of remote model "r"')
WARNING = Problem("models/m.yaml", 1, "id", "id 'm' does not match the file name 'x'", "warning")


def host_plan(*starts: str, serves: tuple[str, ...] = ()) -> Plan:
    actions = tuple(Action("start", m, (0,), 100, 9000, "not running yet") for m in starts)
    remote = (RemoteModel("r", "api.example.com", True, serves),)
    return Plan("rev", True, (WARNING,), actions, remote=remote, secrets=(KEY,))


def fleet() -> FleetPlan:
    return fleet_plan(
        "rev",
        {
            "b": (host_plan("n", serves=("n",)), "from nothing running"),
            "a": (host_plan("m", serves=("m",)), "this host: against what runs here"),
            "c": (None, "hosts/c.yaml says `gpus: auto`: its GPUs are read on c itself"),
        },
        (WARNING,),
        (KEY,),
    )


def test_hosts_come_in_name_order_and_shared_parts_once() -> None:
    plan = fleet()
    text = render_fleet_text(plan)
    assert text.splitlines()[0] == (
        "Plan for rev, 3 host(s): a: 1 to start; b: 1 to start; c: not planned here"
    )
    assert text.index("Host a:") < text.index("Host b:") < text.index("Host c:")
    assert "start    m" in text and "start    n" in text
    assert text.count("remote: r") == 1 and text.count("RECONCILER_SECRET_K") == 1
    assert text.count("does not match the file name") == 1
    assert "gpus: auto" in text


def test_a_remote_model_serves_the_models_of_every_host() -> None:
    plan = fleet()
    assert plan.remote == (RemoteModel("r", "api.example.com", True, ("m", "n")),)


def test_json_has_a_document_per_host_and_the_shared_parts_once() -> None:
    document = json.loads(render_fleet_json(fleet()))
    assert sorted(document["hosts"]) == ["a", "b", "c"]
    assert [a["model"] for a in document["hosts"]["a"]["actions"]] == ["m"]
    assert document["hosts"]["c"] == {
        "planned": False,
        "note": "hosts/c.yaml says `gpus: auto`: its GPUs are read on c itself",
    }
    assert "remote" not in document["hosts"]["a"] and document["hosts"]["a"]["problems"] == []
    assert [r["model"] for r in document["remote"]] == ["r"]
    assert render_fleet_json(fleet()) == render_fleet_json(fleet())


def test_markdown_has_a_section_per_host() -> None:
    markdown = render_fleet_markdown(fleet(), "--- a\n+++ b\n")
    assert "#### Host `a`: 1 to start" in markdown
    assert "#### Host `c`: not planned here" in markdown
    assert markdown.count("#### Remote models") == 1 and markdown.count("#### Secrets") == 1
    assert markdown.index("#### Validation problems") < markdown.index("Spec diff")

"""Secrets stay on the host (reconciler.core.secrets): which variables git may name as a
credential, where each credential may go, and what `reconciler plan` says about them. Plain
values and hypothesis: the environment is a dict here. Also: which host variables an engine
inherits (engines/identity.py), and what a container gets."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_validate import CLUSTER, check, error

from reconciler.core.cluster import ClusterSpec, HostSpec, NotificationTarget
from reconciler.core.plan import Plan, render_json, render_markdown, render_text
from reconciler.core.secrets import (
    SECRET_RULE,
    credential_refusals,
    is_secret_name,
    secret_uses,
)
from reconciler.core.spec import ModelSpec
from reconciler.engines.base import EnginePlacement
from reconciler.engines.docker_container import container_env
from reconciler.engines.identity import PASS_THROUGH, PASS_THROUGH_PREFIXES, inherited_env
from reconciler.engines.vllm import VllmEngine

RULE_TAIL = f": {SECRET_RULE}"
MODEL = {"id": "m", "framework": "vllm", "model_path": "org/m"}
PLACED = EnginePlacement(gpus=(0,), port=8123)


def email(**fields: object) -> NotificationTarget:
    base = {"type": "email", "name": "ops", "from": "r@example.com", "to": ["o@example.com"]}
    return NotificationTarget.model_validate({**base, **fields})


def with_login(host: str = "smtp.example.com", **fields: object) -> NotificationTarget:
    return email(
        host=host,
        username_env="RECONCILER_SECRET_SMTP_USER",
        password_env="RECONCILER_SECRET_SMTP",
        **fields,
    )


# ---- git names only RECONCILER_SECRET_* ----------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "line", "field", "name"),
    [
        (
            "gateway:\n  api_keys:\n    - {name: ci, key_env: PYTHONUNBUFFERED}\n",
            3,
            "gateway.api_keys[0].key_env",
            "PYTHONUNBUFFERED",
        ),
        (
            "notifications:\n  - type: email\n    host: smtp.evil.example\n"
            "    from: a@b\n    to: [c@d]\n    username_env: RECONCILER_SECRET_U\n"
            "    password_env: RECONCILER_API_TOKEN\n",
            7,
            "notifications[0].password_env",
            "RECONCILER_API_TOKEN",
        ),
        (
            "notifications:\n  - {type: slack, url_env: SLACK_WEBHOOK_URL}\n",
            2,
            "notifications[0].url_env",
            "SLACK_WEBHOOK_URL",
        ),
        (
            "notifications:\n  - {type: webhook, url_env: RECONCILER_SECRET_}\n",
            2,
            "notifications[0].url_env",
            "RECONCILER_SECRET_",
        ),
    ],
)
def test_validate_refuses_a_credential_from_any_other_variable(
    cluster: str, line: int, field: str, name: str
) -> None:
    result = check({}, cluster)
    assert result.desired is None
    assert result.problems == [error(CLUSTER, line, field, name + RULE_TAIL)]


def test_old_configurations_without_credentials_stay_valid() -> None:
    cluster = (
        "notifications:\n  - {type: webhook, url: 'https://hooks.example.com/x'}\n"
        "  - {type: email, host: mail.example.com, port: 25, starttls: false, from: a@b, "
        "to: [c@d]}\n"
    )
    assert check({}, cluster).problems == []


def test_an_email_target_may_take_server_and_credentials_from_one_url_secret() -> None:
    target = email(url_env="RECONCILER_SECRET_SMTP_URL")
    assert target.host is None
    with pytest.raises(
        ValueError, match="host, username_env, password_env: url_env holds the server"
    ):
        with_login(url_env="RECONCILER_SECRET_SMTP_URL")
    with pytest.raises(ValueError, match=r"needs host \(or url_env\)"):
        email()


NAME_CHARS = string.ascii_letters + string.digits + "_"


@given(st.text(NAME_CHARS, min_size=1, max_size=40))
def test_only_the_secret_prefix_makes_a_credential_name(name: str) -> None:
    accepted = is_secret_name(name)
    assert accepted == (
        name.startswith("RECONCILER_SECRET_")
        and len(name) > len("RECONCILER_SECRET_")
        and all(c in string.ascii_uppercase + string.digits + "_" for c in name)
    )
    # the gateway's key names the same way: one rule for every credential field
    fields = {"gateway": {"api_keys": [{"name": "k", "key_env": name}]}}
    try:
        ClusterSpec.model_validate(fields)
        parsed = True
    except ValueError:
        parsed = False
    assert parsed == accepted


# ---- a credential goes only where the host binds it -----------------------------------------


def test_credentials_for_a_host_that_is_not_bound_are_refused() -> None:
    refusals = credential_refusals(with_login(), {"RECONCILER_SECRET_SMTP": "pw"})
    assert [r.split(":")[0] for r in refusals] == ["username_env", "password_env"]
    assert "smtp.example.com is not listed in RECONCILER_SECRET_SMTP_HOSTS" in refusals[1]
    assert "a credential goes only where the host binds it" in refusals[1]


def test_credentials_go_to_a_host_listed_beside_them() -> None:
    environ = {
        "RECONCILER_SECRET_SMTP_USER_HOSTS": "smtp.example.com",
        "RECONCILER_SECRET_SMTP_HOSTS": " other.example.org , SMTP.Example.com. ",
    }
    assert credential_refusals(with_login(), environ) == []
    assert len(credential_refusals(with_login("smtp.example.com.evil.net"), environ)) == 2


@given(
    host=st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True),
    listed=st.lists(st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True), max_size=4),
)
def test_a_host_is_bound_exactly_when_listed(host: str, listed: list[str]) -> None:
    environ = {
        "RECONCILER_SECRET_SMTP_USER_HOSTS": ",".join(listed),
        "RECONCILER_SECRET_SMTP_HOSTS": ",".join(listed),
    }
    bound = host.rstrip(".") in {h.rstrip(".") for h in listed} and host.rstrip(".") != ""
    assert (credential_refusals(with_login(host), environ) == []) == bound


@pytest.mark.parametrize(
    ("target", "value", "refused"),
    [
        (email(url_env="RECONCILER_SECRET_SMTP_URL"), "smtps://u:p@mail.example.com:465", False),
        (email(url_env="RECONCILER_SECRET_SMTP_URL"), "smtp://mail.example.com", False),
        (email(url_env="RECONCILER_SECRET_SMTP_URL"), "https://hooks.example.com/x", True),
        (email(url_env="RECONCILER_SECRET_SMTP_URL"), "not-a-url-but-a-key", True),
        (email(url_env="RECONCILER_SECRET_SMTP_URL"), "smtp://u:p@host:99999", True),
        (
            NotificationTarget(type="slack", url_env="RECONCILER_SECRET_SMTP_URL"),
            "smtp://u:p@mail.example.com",
            True,
        ),
        (
            NotificationTarget(type="webhook", url_env="RECONCILER_SECRET_SMTP_URL"),
            "https://hooks.example.com/T0/B0/x",
            False,
        ),
    ],
)
def test_a_url_secret_must_hold_a_destination_of_its_kind(
    target: NotificationTarget, value: str, refused: bool
) -> None:
    refusals = credential_refusals(target, {"RECONCILER_SECRET_SMTP_URL": value})
    assert bool(refusals) == refused
    assert not any(value in r for r in refusals)  # a refusal never shows the secret


# ---- the plan names every secret and where it goes -------------------------------------------

REVIEWED = ClusterSpec.model_validate(
    {
        "notifications": [
            {"type": "slack", "url_env": "RECONCILER_SECRET_SLACK"},
            {
                "type": "email",
                "name": "ops",
                "host": "smtp.example.com",
                "from": "r@example.com",
                "to": ["o@example.com"],
                "username_env": "RECONCILER_SECRET_SMTP_USER",
                "password_env": "RECONCILER_SECRET_SMTP",
            },
        ],
        "gateway": {"api_keys": [{"name": "ci", "key_env": "RECONCILER_SECRET_GW_KEY"}]},
    }
)


def test_the_plan_names_every_secret_and_its_destination_in_each_format() -> None:
    base = ClusterSpec.model_validate({"notifications": [REVIEWED.notifications[0]]})
    plan = Plan("abc", True, secrets=secret_uses(REVIEWED, base))
    lines = render_text(plan).splitlines()
    assert lines[lines.index("Secrets (where git sends each):") + 1 :] == [
        "  RECONCILER_SECRET_SLACK → destination held by the secret (Slack target slack-0)",
        "  RECONCILER_SECRET_SMTP_USER → smtp.example.com:587 (e-mail target ops) NEW",
        "  RECONCILER_SECRET_SMTP → smtp.example.com:587 (e-mail target ops) NEW",
        "  RECONCILER_SECRET_GW_KEY → this host's gateway (checked, never sent) "
        '(gateway key "ci") NEW',
    ]
    markdown = render_markdown(plan).splitlines()
    assert "| `RECONCILER_SECRET_SMTP` | smtp.example.com:587 | e-mail target ops | **new** |" in (
        markdown
    )
    assert (
        "| `RECONCILER_SECRET_SLACK` | destination held by the secret | Slack target slack-0 |  |"
        in markdown
    )
    document = render_json(plan)
    assert '"secret": "RECONCILER_SECRET_GW_KEY"' in document
    assert '"destination": "smtp.example.com:587"' in document


def test_a_plan_without_secrets_says_nothing_about_them() -> None:
    plan = Plan("abc", True, secrets=secret_uses(ClusterSpec()))
    assert "Secrets" not in render_text(plan) + render_markdown(plan)
    assert "secrets" not in render_json(plan)


# ---- engines start with a clean environment ------------------------------------------------


@given(st.dictionaries(st.text(NAME_CHARS, min_size=1, max_size=30), st.text(max_size=8)))
def test_no_reconciler_variable_of_the_host_reaches_an_engine(environ: dict[str, str]) -> None:
    host = {**environ, "RECONCILER_SECRET_X": "s", "RECONCILER_API_TOKEN": "t", "PATH": "/bin"}
    inherited = inherited_env(host, dropped={"host", "port"})
    assert not [k for k in inherited if k.startswith("RECONCILER_")]
    assert not {"HOST", "PORT"} & {k.upper() for k in inherited}
    assert inherited["PATH"] == "/bin"
    assert all(host[k] == v for k, v in inherited.items())
    for name in host.keys() - inherited.keys():  # left out: only what the allow list lacks
        assert (
            name.startswith("RECONCILER_")
            or name.upper() in ("HOST", "PORT")
            or not (name in PASS_THROUGH or name.startswith(PASS_THROUGH_PREFIXES))
        )


def test_a_container_gets_the_spec_env_and_our_values_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECONCILER_SECRET_X", "s")
    monkeypatch.setenv("HF_TOKEN", "hf")
    spec = ModelSpec.model_validate(
        {"id": "c", "framework": "docker", "image": "i", "model_path": "/m", "env": {"A": "1"}}
    )
    env = container_env(spec, EnginePlacement(gpus=(), port=8123))
    assert env == {"A": "1", "PORT": "8123", "MODEL_PATH": "/m"}


@pytest.mark.parametrize("name", ["RECONCILER_SECRET_X", "RECONCILER_MODEL_ID", "reconciler_api"])
def test_a_spec_cannot_hand_an_engine_a_reconciler_variable(name: str) -> None:
    spec = f"id: m\nframework: llama_cpp\nmodel_path: /models/m.gguf\nenv:\n  {name}: x\n"
    result = check({"desired-state/models/m.yaml": spec})
    assert result.problems == [
        error(
            "desired-state/models/m.yaml",
            5,
            f"env.{name}",
            f"'{name}': RECONCILER_* variables are the host's (its settings, secrets, engine "
            "markers)",
        )
    ]


def test_a_spec_that_bypassed_validation_still_hands_no_reconciler_variable(
    tmp_path: Path,
) -> None:
    # e.g. a last valid desired state written by an older reconciler: the engine drops them too
    env = {"RECONCILER_SECRET_X": "x", "RECONCILER_MODEL_ID": "other", "KEPT": "1"}
    spec = ModelSpec.model_construct(**{**ModelSpec.model_validate(MODEL).__dict__, "env": env})
    command = VllmEngine(tmp_path, "ns", launcher=("vllm",)).command(spec, PLACED)
    assert command.env["KEPT"] == "1"
    assert "RECONCILER_SECRET_X" not in command.env
    assert command.env["RECONCILER_MODEL_ID"] == "m"  # the marker, not the spec's value


def test_the_fleet_key_is_listed_for_every_host_gateway_and_a_moved_url_is_new() -> None:
    cluster = ClusterSpec.model_validate({"gateway": {"fleet_key_env": "RECONCILER_SECRET_FLEET"}})
    hosts = {
        "b": HostSpec(gateway="http://10.0.0.2:8000"),
        "a": HostSpec(gateway="https://gpu-a.example.com"),
    }
    uses = secret_uses(cluster, hosts=hosts)
    assert [(u.name, u.destination, u.use) for u in uses] == [
        ("RECONCILER_SECRET_FLEET", "gpu-a.example.com", 'fleet key to host "a"'),
        ("RECONCILER_SECRET_FLEET", "10.0.0.2", 'fleet key to host "b"'),
    ]
    # a pull request that points b's gateway elsewhere shows the key's new destination
    moved = {**hosts, "b": HostSpec(gateway="http://203.0.113.9:8000")}
    review = secret_uses(cluster, cluster, hosts=moved, base_hosts=hosts)
    assert [(u.destination, u.new) for u in review] == [
        ("gpu-a.example.com", False),
        ("203.0.113.9", True),
    ]
    # without a fleet key, the hosts' URLs carry no secret
    assert secret_uses(ClusterSpec(), hosts=hosts) == ()

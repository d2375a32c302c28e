"""Issue 18, item 3: secrets stay on the host.

Before: `password_env`, `username_env`, `url_env` and `key_env` took any variable name, so a
cluster.yaml that `validate` passed sent RECONCILER_API_TOKEN as the SMTP password to a server of
its choosing, and `key_env: PYTHONUNBUFFERED` (1 in the systemd unit) opened the gateway to
`Bearer 1`; every process engine inherited the daemon's whole environment. Now git names only
RECONCILER_SECRET_* variables (validate says so with file:line), a credential goes only where the
host binds it (the secret holds its destination, or <NAME>_HOSTS lists it), and engines start
from a short allow list of the host's variables.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from apply_support import managed_host, stand_in, wait_for
from cli_support import run_cli
from daemon_support import Daemon, free_port, init_repo
from test_notify_delivery import smtp_server

from reconciler.engines.base import (
    MARKER_GPUS,
    MARKER_HASH,
    MARKER_MEMORY,
    MARKER_MODEL,
    MARKER_NAMESPACE,
    MARKER_PORT,
)
from reconciler.engines.identity import MARKER_FRAMEWORK

MARKERS = {
    MARKER_GPUS,
    MARKER_HASH,
    MARKER_MEMORY,
    MARKER_MODEL,
    MARKER_NAMESPACE,
    MARKER_PORT,
    MARKER_FRAMEWORK,
}
"""the only RECONCILER_* variables an engine has: the reconciler's markers"""
RULE = "a credential must come from a RECONCILER_SECRET_* variable"
USER, PASSWORD = "RECONCILER_SECRET_SMTP_USER", "RECONCILER_SECRET_SMTP_PASSWORD"
WAIT_S = 60.0  # generous: two cores shared with other test runs


def validate_problems(desired: Path, cluster: str) -> tuple[int, list[str]]:
    (desired / "cluster.yaml").write_text(cluster)
    proc = run_cli("validate", "desired-state", "--no-path-check", cwd=desired.parent)
    return proc.returncode, [x for x in proc.stdout.splitlines() if "cluster.yaml" in x]


def test_a_gateway_key_named_pythonunbuffered_is_refused(desired: Path) -> None:
    code, lines = validate_problems(
        desired, "gateway:\n  api_keys:\n    - {name: ci, key_env: PYTHONUNBUFFERED}\n"
    )
    assert code == 1
    assert lines == [
        "desired-state/cluster.yaml:3: error: gateway.api_keys[0].key_env: "
        f"PYTHONUNBUFFERED: {RULE}"
    ]


def test_the_api_token_as_smtp_password_is_refused(desired: Path) -> None:
    cluster = (
        "notifications:\n"
        "  - type: email\n"
        "    host: smtp.attacker.example\n"
        "    from: r@example.com\n"
        "    to: [o@example.com]\n"
        f"    username_env: {USER}\n"
        "    password_env: RECONCILER_API_TOKEN\n"
    )
    code, lines = validate_problems(desired, cluster)
    assert code == 1
    assert lines == [
        "desired-state/cluster.yaml:7: error: notifications[0].password_env: "
        f"RECONCILER_API_TOKEN: {RULE}"
    ]


# ---- the plan of a pull request names every secret and where it goes -------------------------


def test_the_plan_shows_a_reviewer_where_a_change_sends_a_secret(desired: Path) -> None:
    root = desired.parent
    git = ["git", "-c", "user.name=Ada", "-c", "user.email=ada@example.com"]
    (desired / "cluster.yaml").write_text(
        "gpus:\n  - {index: 0, name: sim, memory_mb: 24000}\n"
        "notifications:\n  - {type: slack, url_env: RECONCILER_SECRET_SLACK}\n"
    )
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "base"]):
        subprocess.run([*git, *args], cwd=root, check=True, capture_output=True)
    with (desired / "cluster.yaml").open("a") as cluster:  # the pull request adds a destination
        cluster.write(
            "  - {type: email, name: ops, host: smtp.elsewhere.example, from: r@example.com,\n"
            f"     to: [o@example.com], username_env: {USER}, password_env: {PASSWORD}}}\n"
        )
    for args in (["add", "."], ["commit", "-qm", "head"]):
        subprocess.run([*git, *args], cwd=root, check=True, capture_output=True)
    review = ["plan", "desired-state", "--base", "HEAD~1", "--head", "HEAD"]
    text = run_cli(*review, cwd=root).stdout
    assert (
        "RECONCILER_SECRET_SLACK → destination held by the secret (Slack target slack-0)\n" in text
    )
    assert f"{PASSWORD} → smtp.elsewhere.example:587 (e-mail target ops) NEW" in text
    markdown = run_cli(*review, "--format", "markdown", cwd=root).stdout
    assert (
        f"| `{PASSWORD}` | smtp.elsewhere.example:587 | e-mail target ops | **new** |" in markdown
    )
    document = json.loads(run_cli(*review, "--format", "json", cwd=root).stdout)
    assert [(s["secret"], s["destination"], s["new"]) for s in document["secrets"]] == [
        ("RECONCILER_SECRET_SLACK", "destination held by the secret", False),
        (USER, "smtp.elsewhere.example:587", True),
        (PASSWORD, "smtp.elsewhere.example:587", True),
    ]
    # without a review, plan names them too (in CI, where no secret value exists)
    plain = run_cli("plan", "desired-state", "--state-dir", str(root / "no-state"), cwd=root)
    assert f"{PASSWORD} → smtp.elsewhere.example:587 (e-mail target ops)\n" in plain.stdout


# ---- SMTP credentials go only where the host binds them -------------------------------------


@contextlib.contextmanager
def daemon_mailing(root: Path, smtp_port: int, env: dict[str, str]) -> Iterator[Daemon]:
    """A daemon whose cluster.yaml sends e-mail to 127.0.0.1:smtp_port with a login, and whose
    one model crashes at once (so that an `error` notification follows)."""
    with managed_host(root) as host:
        cluster = {
            "gpus": host.gpus,
            "port_range": list(host.port_range),
            "notifications": [
                {
                    "type": "email",
                    "name": "ops",
                    "host": "127.0.0.1",
                    "port": smtp_port,
                    "starttls": False,
                    "from": "reconciler@example.com",
                    "to": ["oncall@example.com"],
                    "username_env": USER,
                    "password_env": PASSWORD,
                    "events": ["error"],
                    "timeout_s": 5,
                }
            ],
        }
        (host.desired / "cluster.yaml").write_text(json.dumps(cluster) + "\n")
        once = {"retry_policy": {"max_retries": 0}}
        host.write_model(stand_in("crashing", env={"FAKE_VLLM_EXIT_IF_EXISTS": "/"}, **once))
        init_repo(host)
        daemon = Daemon(host, free_port(), None, None, extra_args=("--resync", "1"), env=env)
        try:
            daemon.start()
            yield daemon
        finally:
            daemon.stop()


def test_smtp_credentials_never_go_to_a_server_that_only_git_names(tmp_path: Path) -> None:
    secrets = {USER: "rec", PASSWORD: "s3cret"}
    with smtp_server(login=True) as (mailbox, port):
        with daemon_mailing(tmp_path / "unbound", port, secrets) as daemon:
            refused = f"127.0.0.1 is not listed in {PASSWORD}_HOSTS"
            done = wait_for(
                lambda: (
                    mailbox.logins
                    or not mailbox.messages.empty()
                    or ("gave up" in daemon.log() and refused in daemon.log())
                ),
                WAIT_S,
            )
            log = daemon.log()
        assert mailbox.logins == []
        assert mailbox.messages.empty()
        assert done, f"no refused delivery in the log:\n{log}"
        assert f"notifications: ops: refused: password_env: {refused}" in log  # at start
        assert "a credential goes only where the host binds it" in log
        assert "s3cret" not in log
        # the refusal is an error event too: the dashboard, the API and alerts see it
        refusals = [
            e for e in daemon.host.events("error") if e["message"].startswith("notifications: ops")
        ]
        fields = sorted(e["message"].split("refused: ")[1].split(":")[0] for e in refusals)
        assert fields == ["password_env", "username_env"], refusals  # once each, not every pass


def test_smtp_credentials_go_to_a_server_the_host_lists(tmp_path: Path) -> None:
    # the same daemon, the host binding the server: the login arrives (the test above can fail)
    bound = {USER: "rec", PASSWORD: "s3cret", f"{USER}_HOSTS": "127.0.0.1"}
    bound[f"{PASSWORD}_HOSTS"] = "mail.example.com, 127.0.0.1"
    with smtp_server(login=True) as (mailbox, port):
        with daemon_mailing(tmp_path / "bound", port, bound) as daemon:
            sent = wait_for(lambda: not mailbox.messages.empty(), WAIT_S)
            log = daemon.log()
        assert sent, f"no e-mail arrived:\n{log}"
        assert mailbox.logins == [(b"rec", b"s3cret")]


# ---- engines start with a clean environment -------------------------------------------------

HOST_SECRETS = {
    "RECONCILER_API_TOKEN": "api-token-of-the-daemon",
    "RECONCILER_SECRET_X": "a-secret-git-may-name",
    "RECONCILER_WEBHOOK_SECRET": "hmac-secret",
    "SOME_RANDOM_VARIABLE_7Q": "whatever-the-operator-has",
    "PYTHONUNBUFFERED": "1",
}
HOST_SETTINGS = {"TZ": "Europe/Berlin", "HF_HOME": "/srv/hf-cache", "LC_TIME": "C.UTF-8"}


def engine_environment(root: Path, spec: dict[str, Any]) -> dict[str, str]:
    """The environment a daemon's engine process started with (read from /proc), the daemon
    having HOST_SECRETS and HOST_SETTINGS in its own."""
    with managed_host(root) as host:
        host.write_model(spec)
        init_repo(host)
        daemon = Daemon(host, free_port(), "api-token-of-the-daemon", "hmac-secret")
        daemon.env = {**HOST_SECRETS, **HOST_SETTINGS}
        try:
            daemon.start()
            pids = wait_for(lambda: host.engines().get(spec["id"]), WAIT_S)
            assert pids, f"no engine started\n{daemon.log()}"
            return psutil.Process(pids[0]).environ()
        finally:
            daemon.stop()


def test_engines_see_no_secret_of_the_daemon(tmp_path: Path) -> None:
    env = engine_environment(tmp_path, stand_in("m", env={"FROM_THE_SPEC": "yes"}))
    leaked = sorted(name for name in HOST_SECRETS if name in env)
    assert leaked == []
    assert not any(value in env.values() for value in HOST_SECRETS.values() if len(value) > 1)
    assert env["PATH"]  # an engine still finds its executables...
    assert {k: env.get(k) for k in HOST_SETTINGS} == HOST_SETTINGS  # ...its time, locale, cache
    assert env["FROM_THE_SPEC"] == "yes"  # then the spec's env
    assert env[MARKER_MODEL] == "m"  # then the reconciler's own values
    host_only = {k for k in env if k.startswith("RECONCILER_")}
    assert host_only == MARKERS

"""A fleet from one repository, through the CLI as an operator runs it: `reconciler plan` shows
each host's share (text, markdown, JSON, `--host`, a pull request's `--base/--head`), `validate`
points at a broken host file's line, and `apply --host-name a` starts only host a's engines.

The repository is tests/fleet_example (hosts a and b with declared GPUs, a model on both, one on
b, a remote one), committed to a real git repository; the apply test uses stand-in engines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import git
import pytest
from apply_support import Host, managed_host, stand_in, wait_for
from gitops_support import IDENTITY

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "tests" / "fleet_example" / "desired-state"


@pytest.fixture
def fleet_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository holding the example fleet, committed; the working tree's path."""
    for name, value in IDENTITY.items():
        monkeypatch.setenv(name, value)
    shutil.copytree(EXAMPLE, tmp_path / "desired-state")
    repo = git.Repo.init(tmp_path, initial_branch="main")
    repo.index.add(["desired-state"])
    repo.index.commit("a fleet of two hosts")
    repo.close()
    return tmp_path


def cli(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=root,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")},
            "RECONCILER_STATE_DIR": str(root / "no-state-here"),
            "COLUMNS": "200",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def section(text: str, title: str) -> str:
    """The lines of one host's section of the text plan (up to the next blank line)."""
    start = text.index(title)
    end = text.find("\n\n", start)
    return text[start : end if end >= 0 else None]


def test_plan_shows_each_hosts_share_then_the_remote_models_once(fleet_repo: Path) -> None:
    done = cli(fleet_repo, "plan", "desired-state", "--host-name", "a")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.index("Host a:") < out.index("Host b:") < out.index("Remote models")
    a, b = section(out, "Host a:"), section(out, "Host b:")
    assert "this host" in a and "from nothing running" in b
    assert "start    gemma3-270m" in a and "port 8100" in a, "a's port range"
    assert "start    gemma3-270m" in b and "port 8150" in b, "b's port range"
    assert "GPU 1" not in a and "GPU 1: 0 -> 0 of 22522" in b, "each host's own GPUs"
    assert "qwen2-7b" not in out, "disabled: nobody starts it"
    assert out.count("hosted-mini") == 2, "remote model once, and its secret once"


def test_plan_for_one_host_and_in_markdown_and_json(fleet_repo: Path) -> None:
    only_b = cli(fleet_repo, "plan", "desired-state", "--host", "b")
    assert only_b.returncode == 0, only_b.stderr
    assert "Host b:" in only_b.stdout and "Host a" not in only_b.stdout
    markdown = cli(fleet_repo, "plan", "desired-state", "--format", "markdown").stdout
    assert "#### Host `a`: 1 to start" in markdown and "#### Host `b`: 1 to start" in markdown
    assert markdown.count("#### Remote models") == 1
    document = json.loads(cli(fleet_repo, "plan", "desired-state", "--format", "json").stdout)
    assert sorted(document["hosts"]) == ["a", "b"]
    ports = {h: [a["port"] for a in p["actions"]] for h, p in document["hosts"].items()}
    assert ports == {"a": [8100], "b": [8150]}
    assert [r["model"] for r in document["remote"]] == ["hosted-mini"]
    unknown = cli(fleet_repo, "plan", "desired-state", "--host", "c")
    assert unknown.returncode == 2 and "not a host of the fleet (declared: a, b)" in unknown.stderr


def test_a_pull_requests_plan_shows_the_change_on_the_host_it_touches(fleet_repo: Path) -> None:
    spec = fleet_repo / "desired-state" / "models" / "qwen2-7b.yaml"
    spec.write_text(spec.read_text().replace("enabled: false", "enabled: true"))
    repo = git.Repo(fleet_repo)
    repo.index.add([str(spec.relative_to(fleet_repo))])
    repo.index.commit("enable qwen2-7b on b")
    repo.close()
    done = cli(
        fleet_repo,
        "plan",
        "desired-state",
        "--base",
        "HEAD~1",
        "--head",
        "HEAD",
        "--format",
        "markdown",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    host_a = out[out.index("#### Host `a`") : out.index("#### Host `b`")]
    host_b = out[out.index("#### Host `b`") : out.index("#### Remote models")]
    assert "no changes" in host_a and "qwen2-7b" not in host_a, "a converged as before"
    assert "| start | `qwen2-7b` |" in host_b and "20000 MiB" in host_b
    assert "Spec diff" in out


def test_validate_points_at_the_broken_host_file_and_at_a_model_on_no_host(
    fleet_repo: Path,
) -> None:
    desired = fleet_repo / "desired-state"
    host_b = desired / "hosts" / "b.yaml"
    lines = host_b.read_text().splitlines()
    placement = next(i for i, line in enumerate(lines, 1) if line.startswith("placement:"))
    host_b.write_text(host_b.read_text().replace("placement: pack", "placement: tight"))
    spec = desired / "models" / "gemma3-270m.yaml"
    spec.write_text(spec.read_text().replace("hosts: [a, b]", "hosts: [a, c]"))
    hosts_line = next(
        i for i, line in enumerate(spec.read_text().splitlines(), 1) if line.startswith("hosts:")
    )
    done = cli(fleet_repo, "validate", "desired-state", "--no-path-check")
    assert done.returncode == 1
    assert "invalid (3 model(s), 2 host(s) read, 2 error(s)" in done.stdout
    assert f"hosts/b.yaml:{placement}: error: placement:" in done.stdout
    assert (
        f"models/gemma3-270m.yaml:{hosts_line}: error: hosts[1]: unknown host 'c' "
        "(declared: a, b)" in done.stdout
    )


# -- apply: only this host's share ---------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path) as host:
        yield host


def make_fleet(host: Host) -> None:
    """Hosts a (this test's GPUs and free ports) and b; cluster.yaml holds no host field."""
    (host.desired / "cluster.yaml").write_text("gateway: {queue_timeout_s: 30}\n")
    hosts = host.desired / "hosts"
    hosts.mkdir()
    first, last = host.port_range
    (hosts / "a.yaml").write_text(
        f"gpus: {json.dumps(host.gpus)}\nport_range: [{first}, {last}]\n"
        "gateway: http://127.0.0.1:18001\n"
    )
    (hosts / "b.yaml").write_text(
        "gpus: [{index: 0, memory_mb: 8000}]\ngateway: http://127.0.0.1:18002\n"
    )
    host.write_model(stand_in("only-a", hosts=["a"]))
    host.write_model(stand_in("only-b", hosts=["b"], resource_requirements={"gpu_memory_mb": 500}))
    host.write_model(
        stand_in("both", hosts=["a", "b"], resource_requirements={"gpu_memory_mb": 500})
    )


def test_apply_as_host_a_starts_only_as_models(host: Host) -> None:
    make_fleet(host)
    done = host.apply("--host-name", "a")
    assert sorted(done.actions) == ["start both: not running yet", "start only-a: not running yet"]
    assert sorted(host.engines()) == ["both", "only-a"], "nothing of b's runs here"
    assert host.statuses() == {"both": "running", "only-a": "running"}
    last_valid = json.loads((host.state_dir / "last-valid-desired.json").read_text())
    assert last_valid["host"] == "a" and [m["id"] for m in last_valid["elsewhere"]] == ["only-b"]
    status = host.cli("status", "--host-name", "a")
    assert "host: a" in status.stdout
    plan = host.cli("plan", str(host.desired), "--host-name", "a")
    assert plan.returncode == 0, str(plan)
    assert "Host a: no changes (this host: against what runs here)" in plan.stdout
    assert "Host b: 2 to start (from nothing running)" in plan.stdout


def test_the_pre_receive_check_refuses_a_broken_host_file(fleet_repo: Path) -> None:
    host_b = fleet_repo / "desired-state" / "hosts" / "b.yaml"
    host_b.write_text(host_b.read_text().replace("gateway: http://127.0.0.1:8002", ""))
    repo = git.Repo(fleet_repo)
    repo.index.add([str(host_b.relative_to(fleet_repo))])
    repo.index.commit("b without its gateway")
    repo.close()
    done = cli(fleet_repo, "hooks", "validate-rev", "HEAD", "desired-state", "--git-dir", ".")
    assert done.returncode == 1
    assert "desired-state/hosts/b.yaml:1: error: missing required field 'gateway'" in done.stdout


def test_an_undeclared_host_touches_nothing(host: Host) -> None:
    make_fleet(host)
    host.apply("--host-name", "a")
    pids = host.engines()
    host.env["RECONCILER_HOST_NAME"] = "zz"
    done = host.apply(expect=1)
    assert (
        "this host is 'zz': no " in done.stdout
        and "hosts/zz.yaml (the fleet declares a, b); pass --host-name or set RECONCILER_HOST_NAME"
        in done.stdout
    ), str(done)
    assert "nothing was changed" in done.stdout
    assert wait_for(lambda: host.engines() == pids, timeout_s=5), "a's engines untouched"


def test_gpus_shows_the_inventory_of_the_host_it_runs_as(fleet_repo: Path) -> None:
    as_b = cli(fleet_repo, "gpus", "desired-state", "--host-name", "b")
    assert as_b.returncode == 0, as_b.stderr
    assert "source: declared (host b)" in as_b.stdout
    assert as_b.stdout.count("Simulated L4") == 2, "b declares two GPUs, a one"
    stranger = cli(fleet_repo, "gpus", "desired-state", env={"RECONCILER_HOST_NAME": "zz"})
    assert stranger.returncode == 1
    assert "this host is 'zz'" in stranger.stdout

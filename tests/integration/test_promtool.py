"""The Prometheus side, checked by Prometheus' own tools: a running daemon's live /metrics scrape
and an exposition with every family filled pass `promtool check metrics`, alerts.yml passes
`promtool check rules` and its unit tests (`promtool test rules`), prometheus.yml passes
`promtool check config`, the Alertmanager example passes `amtool check-config`.

The tools come from Debian's packages (CI installs them):
  apt-get install -y --no-install-recommends prometheus prometheus-alertmanager
"""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
from pathlib import Path

import httpx
from apply_support import stand_in, wait_for
from components import needs
from daemon_support import running_daemon
from prometheus_client import CollectorRegistry
from ruamel.yaml import YAML

from reconciler.core.instance import InstanceRecord, Status
from reconciler.core.schedule.values import GPUInfo
from reconciler.metrics import DesiredSnapshot, ReconcilerMetrics, render
from reconciler.state.statefile import State

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy/prometheus"
INSTALL_HINT = "apt-get install -y --no-install-recommends prometheus prometheus-alertmanager"

needs_promtool = needs("promtool", INSTALL_HINT, shutil.which("promtool") is not None)
needs_amtool = needs("amtool", INSTALL_HINT, shutil.which("amtool") is not None)


def run(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> tuple[int, str]:
    done = subprocess.run(args, input=stdin, cwd=cwd, capture_output=True, timeout=60)
    return done.returncode, (done.stdout + done.stderr).decode()


def busy_exposition() -> bytes:
    """A real exposition in which every family has series, label values included."""
    state = State(
        revision="4f2a9c1",
        models={
            "qwen2-7b": InstanceRecord(
                "qwen2-7b", Status.running, gpus=(0,), memory_mb=20000, restarts_total=2
            ),
            "small": InstanceRecord("small", Status.preempted),
        },
    )
    gpus = [GPUInfo(0, "NVIDIA A100-SXM4-80GB", 81920, 21000, 60920, 35.0, 55.0, 180.0)]
    registry = CollectorRegistry()
    metrics = ReconcilerMetrics(
        registry,
        state=lambda: state,
        gpus=lambda: gpus,
        desired=lambda: DesiredSnapshot(True, "4f2a9c1", {"qwen2-7b": 8, "small": 2}, 1),
        notifications=lambda: {("slack-0", "sent"): 1, ("slack-0", "failed"): 0},
    )
    metrics.record_event({"kind": "ready", "model": "qwen2-7b", "message": "", "seconds": 42.0})
    metrics.record_event({"kind": "preempt", "model": "small", "message": "for qwen2-7b"})
    metrics.record_pass(0.05, "ok")
    metrics.record_pass(0.02, "invalid")
    return render(registry)


@needs_promtool
def test_a_live_scrape_of_a_running_daemon_passes_promtool_check_metrics(tmp_path: Path) -> None:
    quiet = {"health_check": {"interval_s": 30}}
    models = [
        stand_in("alpha", priority=7, **quiet),
        stand_in("huge", resource_requirements={"gpu_memory_mb": 100_000}, **quiet),
    ]
    with running_daemon(tmp_path, models) as daemon:
        daemon.wait_ready()
        daemon.wait_statuses({"alpha": "running"})

        def scrape() -> bytes | None:
            # a rendering may be a few seconds old: wait for one that has seen alpha ready
            response = httpx.get(f"{daemon.url}/metrics", timeout=10.0)
            assert response.status_code == 200, response.text
            ready = b'reconciler_model_ready_seconds_count{model="alpha"}'
            return response.content if ready in response.content else None

        exposition = wait_for(scrape, timeout_s=30, interval_s=0.5)
        assert exposition is not None, f"alpha never showed as ready in /metrics\n{daemon.log()}"
    assert b"reconciler_unschedulable_models 1" in exposition
    code, output = run("promtool", "check", "metrics", stdin=exposition)
    assert (code, output) == (0, "")


@needs_promtool
def test_an_exposition_with_every_family_filled_passes_promtool_check_metrics() -> None:
    exposition = busy_exposition()
    assert b"reconciler_gpu_power_watts" in exposition  # the whole exposition is checked
    code, output = run("promtool", "check", "metrics", stdin=exposition)
    assert (code, output) == (0, "")


@needs_promtool
def test_promtool_check_metrics_does_fail_on_a_bad_name() -> None:
    # guards the test above: promtool must really be linting what it is given
    bad = b"# HELP bad_count_total a counter\n# TYPE bad_count_total gauge\nbad_count_total 1\n"
    code, output = run("promtool", "check", "metrics", stdin=bad)
    assert code != 0 and "counter" in output


@needs_promtool
def test_alert_rules_pass_promtool_check_rules() -> None:
    code, output = run("promtool", "check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert code == 0, output
    assert "SUCCESS" in output


@needs_promtool
def test_alert_rules_pass_their_unit_tests() -> None:
    code, output = run("promtool", "test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert code == 0, output


@needs_promtool
def test_the_scrape_config_passes_promtool_check_config() -> None:
    code, output = run("promtool", "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert code == 0, output


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    yaml = YAML(typ="safe")
    rules = yaml.load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    tests = yaml.load((PROMETHEUS / "alerts_test.yml").read_text(encoding="utf-8"))
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - fired == set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


# Grafana's own variables, replaced by what Grafana would send
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((REPO / "deploy/grafana/reconciler-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for old, new in GRAFANA_VARIABLES.items():
        exprs = [e.replace(old, new) for e in exprs]
    return exprs


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses the expression of every rule it checks: the queries become rules
    exprs = dashboard_exprs()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules), encoding="utf-8")  # JSON is YAML
    code, output = run("promtool", "check", "rules", str(path))
    assert code == 0, output
    assert f"SUCCESS: {len(exprs)} rules found" in output


@needs_amtool
def test_the_alertmanager_example_passes_amtool_check_config() -> None:
    config = REPO / "deploy/alertmanager/alertmanager.yml"
    code, output = run("amtool", "check-config", str(config))
    assert code == 0, output


def test_the_systemd_unit_lets_engines_outlive_the_daemon() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(REPO / "deploy/systemd/reconciler.service", encoding="utf-8")
    service = unit["Service"]
    assert service["KillMode"] == "process"
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"].startswith("/etc/")
    assert " run " in service["ExecStart"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"

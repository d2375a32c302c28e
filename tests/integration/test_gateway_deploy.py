"""The gateway's Prometheus side: its alert rules pass promtool and their unit tests, and the
dashboard and the alerts use only metric names the gateway exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from components import needs
from ruamel.yaml import YAML

from reconciler.gateway.metrics import Failover, GatewayMetrics

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "gateway-dashboard.json"
METRIC_NAME = re.compile(r"\breconciler_gateway_[a-z_]+")
needs_promtool = needs(
    "promtool",
    "apt-get install -y --no-install-recommends prometheus",
    shutil.which("promtool") is not None,
)


def exported() -> set[str]:
    """Every sample name of an exposition in which every family has a series."""
    metrics = GatewayMetrics()
    metrics.request_done("m", 200, 0.01)
    metrics.first_byte("m", 0.005)
    metrics.tokens_add("m", "prompt", 3)
    metrics.inflight_add("m", 1)
    metrics.queue_add("m", 1)
    metrics.cold_started("m", 4.0)
    metrics.failover("m", Failover.connection)
    metrics.key_used("ci")
    text = metrics.exposition().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


@needs_promtool
def test_gateway_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    for argv in (["check", "rules", "gateway_alerts.yml"], ["check", "config", "prometheus.yml"]):
        done = subprocess.run(["promtool", *argv], cwd=PROMETHEUS, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        ["promtool", "test", "rules", "gateway_alerts_test.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_every_gateway_alert_has_a_firing_test() -> None:
    yaml = YAML(typ="safe")
    rules = yaml.load((PROMETHEUS / "gateway_alerts.yml").read_text(encoding="utf-8"))
    tests = yaml.load((PROMETHEUS / "gateway_alerts_test.yml").read_text(encoding="utf-8"))
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    firing = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert alerts and alerts == firing


def test_dashboard_and_alerts_use_only_exported_gateway_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = YAML(typ="safe").load((PROMETHEUS / "gateway_alerts.yml").read_text("utf-8"))
    queries += [r["expr"] for group in rules["groups"] for r in group["rules"]]
    used = {name for q in queries for name in METRIC_NAME.findall(q)}
    assert "reconciler_gateway_request_duration_seconds_bucket" in used  # p95 per model
    assert used - exported() == set()
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Gateway requests/s", "Gateway p95 latency", "Time to first token p95"} <= titles
    assert {"Tokens/s", "Queue depth"} <= titles

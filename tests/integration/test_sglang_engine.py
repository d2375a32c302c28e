"""SGLang end to end, with tests/fakes/fake_sglang.py as its launcher ($RECONCILER_SGLANG).

The engine was added as one module (reconciler/engines/sglang.py) and one registry line; these
tests walk a user's path through every face: validate, plan, apply (start, health, adoption by a
new reconciler process, restart after a crash), the engine's own HTTP protocol, and the render
to Kubernetes (strictly valid manifests).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import kubernetes_validate
import psutil
import pytest
import yaml
from apply_support import REPO, Host, managed_host, running, stand_in, vllm_wrapper, wait_gone

from reconciler.core.spec_checks import validate
from reconciler.engines.base import EnginePlacement
from reconciler.engines.registry import catalog
from reconciler.engines.sglang import SglangEngine
from reconciler.source.load import load_directory

FAKE_SGLANG = REPO / "tests" / "fakes" / "fake_sglang.py"


def sglang_launcher(directory: Path) -> Path:
    """An executable that runs the stand-in with this interpreter (what RECONCILER_SGLANG names)."""
    return vllm_wrapper(directory / "sglang", FAKE_SGLANG)  # any name: only its path is used


def sglang_model(model_id: str, **fields: object) -> dict:
    spec = stand_in(model_id, **fields)
    spec["framework"] = "sglang"
    spec["parameters"] = {"context-length": 1024, "mem-fraction-static": 0.5}
    spec.update({k: v for k, v in fields.items() if k == "parameters"})
    return spec


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with managed_host(tmp_path) as host:
        host.env["RECONCILER_SGLANG"] = str(sglang_launcher(tmp_path / "bin"))
        yield host


def reported(log_text: str) -> dict:
    for line in log_text.splitlines():
        if line.startswith('{"fake_sglang"'):
            return json.loads(line)["fake_sglang"]
    raise AssertionError(f"the stand-in did not report its argv:\n{log_text}")


def test_an_unknown_sglang_flag_is_an_error_with_its_line_and_a_suggestion(host: Host) -> None:
    host.write_model(sglang_model("q", parameters={"mem-fraction-statc": 0.8}))
    result = validate(load_directory(host.desired), catalog=catalog())
    [problem] = [p for p in result.problems if p.is_error]
    assert problem.file.endswith("models/q.yaml")
    text = (host.desired / "models" / "q.yaml").read_text().splitlines()
    assert "mem-fraction-statc" in text[problem.line - 1]
    assert "unknown sglang parameter 'mem-fraction-statc'" in problem.message
    assert "did you mean 'mem-fraction-static'" in problem.message
    cli = host.cli("validate", str(host.desired))
    assert cli.returncode != 0 and f"q.yaml:{problem.line}" in cli.output, cli


def test_plan_apply_adopt_and_restart_through_the_stand_in(host: Host) -> None:
    host.write_model(sglang_model("q"))
    plan = host.cli("plan", str(host.desired))
    assert plan.returncode == 0, plan
    assert re.search(r"start +q +\[GPU 0, 1000 MiB", plan.output), plan

    host.apply()
    running(host, "q")
    port, pid = host.port("q"), host.pid("q")
    base = f"http://127.0.0.1:{port}"
    info = httpx.get(base + "/get_model_info", timeout=5, trust_env=False).json()
    assert info["model_path"] == "test/q"
    chat = httpx.post(
        base + "/v1/chat/completions",
        json={"model": "test/q", "messages": [{"role": "user", "content": "hi"}]},
        timeout=5,
        trust_env=False,
    )
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    given = reported((host.state_dir / "logs" / "q.log").read_text())
    assert given["argv"][:8] == [
        "--model-path", "test/q", "--host", "127.0.0.1", "--port", str(port), "--tp-size", "1",
    ]  # fmt: skip
    assert given["env"]["CUDA_VISIBLE_DEVICES"] == "0"

    again = host.apply()  # a new reconciler process: adopts, starts nothing
    assert "nothing to do" in again.stdout, again
    assert host.pid("q") == pid and len(host.events("start", "q")) == 1

    psutil.Process(pid).kill()
    assert wait_gone(pid)
    restarted = host.apply()
    assert "start q: restart after error: engine exited" in restarted.stdout, restarted
    running(host, "q")
    assert host.pid("q") != pid
    assert host.model("q").restarts_total == 1


def test_listen_variables_in_the_spec_never_reach_sglang(tmp_path: Path) -> None:
    engine = SglangEngine(tmp_path, "ns", launcher=(str(sglang_launcher(tmp_path / "bin")),))
    from reconciler.core.spec import ModelSpec

    spec = ModelSpec.model_validate(
        {
            "id": "q",
            "framework": "sglang",
            "model_path": "org/q",
            "env": {"SGLANG_PORT": "1", "SGLANG_HOST_IP": "0.0.0.0", "HF_HOME": "/x"},
        }
    )
    command = engine.command(spec, EnginePlacement(gpus=(0, 1), port=30000))
    assert "SGLANG_PORT" not in command.env and "SGLANG_HOST_IP" not in command.env
    assert command.env["HF_HOME"] == "/x"
    assert command.argv[command.argv.index("--tp-size") + 1] == "2"


def test_render_to_kubernetes_is_strictly_valid(host: Host, tmp_path: Path) -> None:
    host.write_model(sglang_model("q", resource_requirements={"gpu_memory_mb": 20000}))
    out = tmp_path / "k8s"
    result = host.cli("render", "kubernetes", str(host.desired), "--out", str(out))
    assert result.returncode == 0, result
    docs = list(yaml.safe_load_all((out / "models" / "q.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    [engine] = deployment["spec"]["template"]["spec"]["containers"]
    assert engine["image"].startswith("lmsysorg/sglang")
    assert engine["command"][:5] == [
        "python3",
        "-m",
        "sglang.launch_server",
        "--model-path",
        "test/q",
    ]

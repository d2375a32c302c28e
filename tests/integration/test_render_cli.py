"""`reconciler render kubernetes` as an operator and a pull-request check run it: real processes.

Exit codes: 0 rendered (or up to date with --check), 1 invalid or unrenderable desired state or a
stale output, 2 usage errors. No input ever ends in a Python traceback.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import git
import pytest
import yaml
from cli_support import run_cli

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "desired-state"


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


def render(directory: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("render", "kubernetes", str(directory), "--out", str(out), *extra)


CLUSTER = """\
gpus: [{index: 0, memory_mb: 81920}, {index: 1, memory_mb: 81920}]
reserved_memory_mb: 512
"""
SMALL = """\
id: small
framework: llama_cpp
model_path: /models/small.gguf
priority: 5
resource_requirements: {gpu_count: 1, gpu_memory_mb: 2000}
"""
BIG = """\
id: big
framework: vllm
model_path: org/big-model
priority: 8
resource_requirements: {gpu_count: 2, gpu_memory_mb: 70000}
fallback: small
"""
WEB = """\
id: web
framework: docker
image: registry.example/web:1
model_path: /www
priority: 3
resource_requirements: {gpu_count: 0}
"""


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    """A small desired-state of every framework that a test may edit."""
    root = tmp_path / "desired-state"
    (root / "models").mkdir(parents=True)
    (root / "cluster.yaml").write_text(CLUSTER)
    for name, text in {"small": SMALL, "big": BIG, "web": WEB}.items():
        (root / "models" / f"{name}.yaml").write_text(text)
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def deployment(out: Path, model_id: str) -> dict:
    return next(yaml.safe_load_all((out / "models" / f"{model_id}.yaml").read_text()))


def test_renders_the_bundled_desired_state_and_says_what_does_not_apply(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = render(BUNDLED, out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.yaml")) == [
        "gateway.yaml",
        "kustomization.yaml",
        "models/gemma3-270m.yaml",
        "models/qwen2-7b.yaml",
        "models/web-echo.yaml",
        "priorityclasses.yaml",
    ]
    # the gateway routes qwen2-7b's requests to its fallback there too
    assert "fallback gemma3-270m does not apply" not in proc.stdout
    assert "note: gateway: image ghcr.io/example/reconciler:latest is a placeholder" in proc.stdout
    assert "note: web-echo: gpu_devices [1] does not apply on Kubernetes" in proc.stdout
    assert "6 written, 0 removed, 0 unchanged" in proc.stdout
    again = render(BUNDLED, out)
    assert "0 written, 0 removed, 6 unchanged" in again.stdout
    check = render(BUNDLED, out, "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "up to date" in check.stdout


def test_check_fails_on_a_stale_output_until_it_is_rendered_again(
    specs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert render(specs, out).returncode == 0
    before = (out / "models/small.yaml").read_text()
    edit(specs / "models/small.yaml", "priority: 5", "priority: 6")

    check = render(specs, out, "--check")
    assert check.returncode == 1
    assert check.stdout.splitlines() == [
        f"stale: {out / 'models/small.yaml'}",
        f"stale: {out / 'priorityclasses.yaml'}",  # level 6 replaces level 5
    ]
    assert "is stale: run `reconciler render kubernetes" in check.stderr
    assert (out / "models/small.yaml").read_text() == before  # --check writes nothing

    assert render(specs, out).returncode == 0
    assert render(specs, out, "--check").returncode == 0
    after = (out / "models/small.yaml").read_text()
    changed = sorted(set(before.splitlines()) ^ set(after.splitlines()))
    assert changed == [
        "      priorityClassName: reconciler-priority-05",
        "      priorityClassName: reconciler-priority-06",
    ]


def test_a_removed_model_is_removed_from_the_output(specs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert render(specs, out).returncode == 0
    (specs / "models/web.yaml").unlink()
    assert render(specs, out, "--check").returncode == 1
    proc = render(specs, out)
    assert "1 removed" in proc.stdout
    assert not (out / "models/web.yaml").exists()
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert "models/web.yaml" not in kustomization["resources"]


def test_namespace_option_wins_over_cluster_yaml(specs: Path, tmp_path: Path) -> None:
    cluster = specs / "cluster.yaml"
    cluster.write_text(cluster.read_text() + "kubernetes:\n  namespace: from-file\n")
    render(specs, tmp_path / "a")
    assert deployment(tmp_path / "a", "big")["metadata"]["namespace"] == "from-file"
    render(specs, tmp_path / "b", "--namespace", "llm")
    assert deployment(tmp_path / "b", "big")["metadata"]["namespace"] == "llm"


def test_invalid_desired_state_is_reported_with_file_and_line(specs: Path, tmp_path: Path) -> None:
    edit(specs / "models/big.yaml", "priority: 8", "priorty: 8")
    proc = render(specs, tmp_path / "out")
    assert proc.returncode == 1
    assert "models/big.yaml:4: error: priorty: unknown field 'priorty'" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_a_model_no_pod_can_see_is_reported_at_its_model_path(specs: Path, tmp_path: Path) -> None:
    edit(specs / "models/small.yaml", "/models/small.gguf", "/opt/small.gguf")
    proc = render(specs, tmp_path / "out")
    assert proc.returncode == 1
    assert "models/small.yaml:3: error: model_path: /opt/small.gguf is not below" in proc.stdout
    assert "kubernetes.model_paths.small" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_in_model_paths_is_reported_in_cluster_yaml(
    specs: Path, tmp_path: Path
) -> None:
    cluster = specs / "cluster.yaml"
    cluster.write_text(CLUSTER + "kubernetes:\n  model_paths:\n    ghost: g.gguf\n")
    proc = render(specs, tmp_path / "out")
    assert proc.returncode == 1
    assert "cluster.yaml:5: error: kubernetes.model_paths.ghost: 'ghost' is not a model" in (
        proc.stdout
    )


@pytest.mark.parametrize(
    "args",
    [
        ["render", "kubernetes", "desired-state"],  # no --out
        ["render", "kubernetes", "no-such-dir", "--out", "{out}"],
        ["render", "kubernetes", "desired-state", "--out", "{out}", "--namespace", "Bad_NS"],
        ["render", "kubernetes", "desired-state", "--out", "{out}", "--bogus"],
        ["render", "kubernetes", "desired-state", "--out", "{out}", "--rev", "no-such-rev"],
        ["render", "kubernetes", "desired-state", "--out", "{file}"],
    ],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    values = {"out": str(tmp_path / "out"), "file": str(tmp_path / "file")}
    proc = run(*(a.format(**values) for a in args))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_output_directory_with_files_of_its_own_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "kustomization.yaml").write_text("resources: [mine.yaml]\n")
    proc = render(BUNDLED, out)
    assert proc.returncode == 2
    assert "not written by reconciler" in proc.stderr
    assert (out / "kustomization.yaml").read_text() == "resources: [mine.yaml]\n"
    assert not (out / "models").exists()


def test_rev_renders_a_commit_and_stamps_it(specs: Path, tmp_path: Path) -> None:
    repo = git.Repo.init(tmp_path)
    repo.index.add([str(p) for p in specs.rglob("*.yaml")])
    author = git.Actor("t", "t@example.com")
    commit = repo.index.commit("specs", author=author, committer=author)
    edit(specs / "models/big.yaml", "priority: 8", "priority: 9")  # not committed

    out = tmp_path / "out"
    assert render(specs, out, "--rev", "HEAD").returncode == 0
    committed = deployment(out, "big")
    annotations = committed["metadata"]["annotations"]
    assert annotations["reconciler.io/source-revision"] == commit.hexsha
    assert annotations["reconciler.io/source-file"] == "models/big.yaml"
    pod = committed["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "reconciler-priority-08"
    assert render(specs, out, "--rev", "HEAD", "--check").returncode == 0

    assert render(specs, out).returncode == 0
    working = deployment(out, "big")
    assert working["metadata"]["annotations"]["reconciler.io/source-revision"] == "working-tree"
    assert working["spec"]["template"]["spec"]["priorityClassName"] == "reconciler-priority-09"

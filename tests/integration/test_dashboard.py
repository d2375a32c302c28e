"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright.

The page is loaded once per test from a real daemon and never reloaded: a commit to the
desired-state repository must show up through the event stream (or polling) by itself. The
first test also writes docs/dashboard.png for the README.

Needs the `playwright` Python package (its browser downloads are not used) and Chromium:
    .venv/bin/pip install playwright   # part of the dev extra
    apt-get install -y chromium
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from components import require, require_module

sync_api = require_module(
    "playwright.sync_api", ".venv/bin/pip install playwright (the dev extra)", module_level=True
)

from apply_support import stand_in, wait_for  # noqa: E402
from daemon_support import Daemon, commit, running_daemon  # noqa: E402

CHROMIUM = os.environ.get("RECONCILER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The README's screenshot is refreshed only on request, so that `make test` leaves the tree clean.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
UPDATE_DOCS = os.environ.get("RECONCILER_UPDATE_SCREENSHOT") == "1"
UPDATE_TIMEOUT_MS = 30_000

require(
    f"Chromium ({CHROMIUM})",
    "apt-get install -y chromium (or set RECONCILER_CHROMIUM)",
    Path(CHROMIUM).exists(),
    module_level=True,
)

expect = sync_api.expect


def host_models(broken_marker: Path) -> list[dict[str, Any]]:
    """A small fleet with every kind of row: running, disabled, unplaceable, crashing."""
    quiet = {"health_check": {"interval_s": 30}}
    return [
        stand_in(
            "llama3-8b",
            name="Llama 3 8B Instruct",
            priority=9,
            resource_requirements={"gpu_memory_mb": 3000},
            **quiet,
        ),
        stand_in(
            "qwen2-7b",
            name="Qwen2 7B Instruct",
            priority=6,
            resource_requirements={"gpu_memory_mb": 2500},
            **quiet,
        ),
        stand_in("phi3-mini", name="Phi-3 mini", priority=4, **quiet),
        stand_in("mistral-7b", name="Mistral 7B", priority=5, enabled=False, **quiet),
        stand_in(
            "llama3-70b",
            name="Llama 3 70B (needs an 80 GB GPU)",
            priority=3,
            resource_requirements={"gpu_memory_mb": 70_000},
            **quiet,
        ),
        stand_in(
            "gemma2-9b",
            name="Gemma 2 9B (broken dependency)",
            priority=2,
            env={"FAKE_VLLM_EXIT_IF_EXISTS": str(broken_marker)},
            retry_policy={"max_retries": 1, "backoff_s": 0.2, "max_backoff_s": 0.2},
            **quiet,
        ),
        stand_in("tinyllama", name="TinyLlama (on demand)", activation="on_demand", **quiet),
    ]


GPUS = [
    {"index": 0, "name": "Simulated L4", "memory_mb": 8000},
    {"index": 1, "name": "Simulated L4", "memory_mb": 8000},
]
SETTLED = {
    "llama3-8b": "running",
    "qwen2-7b": "running",
    "phi3-mini": "running",
    "mistral-7b": "stopped",
    "llama3-70b": "stopped",
    "gemma2-9b": "error",
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("dashboard")
    broken = root / "broken-dependency"
    broken.write_text("the engine fails while this file exists\n")
    with running_daemon(root, host_models(broken), gpus=GPUS) as d:
        d.wait_ready()
        d.wait_statuses(SETTLED, timeout_s=60)
        gave_up = lambda: d.json("/api/v1/models/gemma2-9b")["given_up"]  # noqa: E731
        assert wait_for(gave_up, 30, 0.2), d.json("/api/v1/models/gemma2-9b")
        yield d


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, daemon: Daemon) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(daemon.url + "/")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def row(page: Any, model_id: str) -> Any:
    return page.locator(f'#models tr[data-model="{model_id}"]')


def test_every_model_shows_its_status_and_a_screenshot_is_taken(page: Any, tmp_path: Path) -> None:
    for model_id, status in SETTLED.items():
        expect(row(page, model_id).locator(".status")).to_have_text(status)
    expect(row(page, "gemma2-9b").locator(".note")).to_contain_text("exited with code 1")
    expect(row(page, "llama3-70b").locator(".note")).to_contain_text("70000")
    expect(page.locator("#live")).to_have_text("live", timeout=10_000)
    gpu0 = page.locator('.gpu[data-gpu="0"]')
    expect(gpu0).to_contain_text("GPU 0")
    expect(page.locator(".gpu .segment")).to_have_count(3)  # one per running model
    expect(page.locator("#revision")).to_contain_text("initial desired state")
    expect(page.locator("#events li").first).to_be_visible()
    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if UPDATE_DOCS:
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)


def test_an_on_demand_model_nobody_asked_for_shows_as_idle(page: Any) -> None:
    expect(row(page, "tinyllama").locator(".status")).to_contain_text("on demand: idle")
    expect(row(page, "tinyllama").locator(".note")).to_contain_text("starts on its first request")


def test_a_commit_shows_up_without_a_reload(page: Any, daemon: Daemon) -> None:
    expect(page.locator("#live")).to_have_text("live", timeout=10_000)
    expect(row(page, "phi3-mini").locator(".status")).to_have_text("running")
    page.evaluate("window.__notReloaded = true")
    host = daemon.host
    phi = next(m for m in host_models(host.root / "broken-dependency") if m["id"] == "phi3-mini")
    mistral = next(m for m in host_models(host.root / "broken") if m["id"] == "mistral-7b")
    host.write_model({**phi, "enabled": False})
    host.write_model({**mistral, "enabled": True})
    commit(host, "swap phi3-mini for mistral-7b")
    try:
        phi_status = row(page, "phi3-mini").locator(".status")
        expect(phi_status).to_have_text("stopped", timeout=UPDATE_TIMEOUT_MS)
        mistral_status = row(page, "mistral-7b").locator(".status")
        expect(mistral_status).to_have_text("running", timeout=UPDATE_TIMEOUT_MS)
        expect(page.locator("#revision")).to_contain_text("swap phi3-mini for mistral-7b")
        expect(page.locator("#events")).to_contain_text("mistral-7b")
        assert page.evaluate("window.__notReloaded") is True
    finally:
        host.write_model(phi)
        host.write_model(mistral)
        commit(host, "back to phi3-mini")
    daemon.wait_statuses({"phi3-mini": "running", "mistral-7b": "stopped"})


def test_an_invalid_desired_state_shows_its_problems(page: Any, daemon: Daemon) -> None:
    host = daemon.host
    problems = page.locator("#problems")
    expect(problems).to_be_hidden()
    path = host.desired / "models" / "qwen2-7b.yaml"
    good = path.read_text()
    path.write_text(good.replace('"priority": 6', '"priority": 11'))
    commit(host, "qwen2-7b: priority 11")
    try:
        expect(problems).to_be_visible(timeout=UPDATE_TIMEOUT_MS)
        expect(problems).to_contain_text("qwen2-7b.yaml:")
        expect(problems).to_contain_text("priority")
        expect(row(page, "qwen2-7b").locator(".status")).to_have_text("running")
    finally:
        path.write_text(good)
        commit(host, "qwen2-7b: priority 6 again")
    expect(problems).to_be_hidden(timeout=UPDATE_TIMEOUT_MS)


def test_requests_through_the_gateway_show_as_req_s_and_p95(page: Any, daemon: Daemon) -> None:
    def gateway_lists_llama() -> bool:
        listed = httpx.get(f"{daemon.gateway_url}/models", timeout=5).json()["data"]
        return any(m["id"] == "llama3-8b" and m["status"] == "running" for m in listed)

    assert wait_for(gateway_lists_llama, 20, 0.2), daemon.log()
    llama = row(page, "llama3-8b")
    expect(llama.locator(".rps")).to_have_text("")  # nobody asked yet: blank, not 0
    body = {"model": "llama3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    for _ in range(20):
        response = httpx.post(f"{daemon.gateway_url}/chat/completions", json=body, timeout=20)
        assert response.status_code == 200, response.text
    expect(llama.locator(".rps")).to_have_text(re.compile(r"^\d+\.\d+$"), timeout=UPDATE_TIMEOUT_MS)
    expect(llama.locator(".p95")).to_have_text(re.compile(r"^\d+(\.\d)? ms$"))
    expect(llama.locator(".rps")).to_have_attribute("title", re.compile(r"^20 requests in \d+s"))
    assert float(llama.locator(".rps").inner_text()) > 0
    expect(row(page, "qwen2-7b").locator(".rps")).to_have_text("")  # no requests: no figures
    expect(row(page, "qwen2-7b").locator(".p95")).to_have_text("")

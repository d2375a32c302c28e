"""Replicas and aliases through `reconciler run`: two engine instances of one spec behind the one
endpoint, a client that keeps sending while one instance is killed, and a model asked for by an
alias. The engines are vLLM stand-ins (real processes); the client is the real `openai` package.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
from apply_support import stand_in, wait_for
from daemon_support import Daemon, running_daemon

CHAT = [{"role": "user", "content": "hello"}]
REQUESTS = 200
CONCURRENCY = 8
KILL_AFTER = 50


def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.gateway_url, api_key="unused", max_retries=0, timeout=20)


def detail(daemon: Daemon, model_id: str) -> dict:
    return daemon.json(f"/api/v1/models/{model_id}")


class ServedCounts:
    """Requests each instance URL answered, read from the gateway's /internal/inflight while the
    load runs (a killed instance's counter goes with it: the highest count seen is kept)."""

    def __init__(self, daemon: Daemon) -> None:
        self.url = f"http://127.0.0.1:{daemon.gateway_port}/internal/inflight"
        self.seen: dict[str, int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=2) as http:
            while not self.done.wait(0.02):
                try:
                    report = http.get(self.url).json()
                except (httpx.HTTPError, ValueError):
                    continue
                for url, instance in report["instances"].items():
                    self.seen[url] = max(self.seen.get(url, 0), instance["served"])

    def __enter__(self) -> ServedCounts:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)


def test_two_replicas_serve_every_request_while_one_is_killed(tmp_path: Path) -> None:
    gpus = [{"index": i, "name": "Simulated", "memory_mb": 2000} for i in range(2)]
    spec = stand_in(
        "chat",
        replicas=2,
        aliases=["gpt-4o-mini"],
        resource_requirements={"gpu_count": 1, "gpu_memory_mb": 800},
    )
    with running_daemon(tmp_path / "host", [spec], gpus=gpus) as daemon:
        daemon.wait_statuses({"chat": "running", "chat.1": "running"})
        # the model in full: both instances, each with its own port and GPU
        model = detail(daemon, "chat")
        assert model["spec"]["replicas"] == 2 and model["spec"]["aliases"] == ["gpt-4o-mini"]
        instances = {i["id"]: i for i in model["instances"]}
        assert sorted(instances) == ["chat", "chat.1"]
        assert all(i["status"] == "running" for i in instances.values())
        assert instances["chat"]["port"] != instances["chat.1"]["port"]
        assert instances["chat"]["gpus"] != instances["chat.1"]["gpus"]  # spread over GPUs
        urls = {f"http://127.0.0.1:{i['port']}" for i in instances.values()}

        openai_client = client(daemon)

        def listed() -> set[str]:
            try:
                return {m.id for m in openai_client.models.list().data}
            except openai.APIError:
                return set()

        assert wait_for(lambda: {"chat", "gpt-4o-mini"} <= listed(), 20, 0.2), daemon.log()
        assert "chat.1" not in listed()  # instances are the model's, not models of their own

        # an alias is answered by the model it names, which the response says
        raw = openai_client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=CHAT, max_tokens=4
        )
        assert raw.headers["x-reconciler-model"] == "chat"
        assert raw.parse().choices[0].message.content

        victim = detail(daemon, "chat.1")["pid"]
        completed, killed = [], threading.Event()
        lock = threading.Lock()

        def one(_: int) -> str:
            answer = openai_client.chat.completions.with_raw_response.create(
                model="chat", messages=CHAT, max_tokens=4
            )
            text = answer.parse().choices[0].message.content or ""
            with lock:
                completed.append(answer.headers["x-reconciler-model"])
                if len(completed) == KILL_AFTER:
                    os.kill(victim, signal.SIGKILL)
                    killed.set()
            return text

        with ServedCounts(daemon) as served, ThreadPoolExecutor(CONCURRENCY) as pool:
            answers = list(pool.map(one, range(REQUESTS)))  # raises on the first failure

        assert killed.is_set()
        assert len(answers) == REQUESTS and all(answers)
        assert set(completed) == {"chat"}
        assert all(served.seen.get(url, 0) > 0 for url in urls), served.seen
        # the daemon noticed the kill and started the instance again
        daemon.wait_statuses({"chat": "running", "chat.1": "running"})
        assert detail(daemon, "chat.1")["restarts"] >= 1, daemon.log()
        # an instance is a model of the API's: listed as desired, and restarted on request
        listed_models = {m["id"]: m for m in daemon.json("/api/v1/models")}
        assert (
            listed_models["chat.1"]["desired"] and listed_models["chat.1"]["replica_of"] == "chat"
        )
        before = detail(daemon, "chat.1")["pid"]
        r = httpx.post(f"{daemon.url}/api/v1/models/chat.1/restart", timeout=10)
        assert r.status_code == 202, r.text
        assert wait_for(lambda: detail(daemon, "chat.1")["pid"] not in (None, before), 30, 0.2)

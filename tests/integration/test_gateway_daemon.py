"""The gateway as `reconciler run` serves it: fed by the loop, in front of real engine processes.

The engines are the vLLM stand-in (real processes speaking vLLM's HTTP API); the client is the
real `openai` package. What is checked is what a client of the one endpoint notices: every model
answers there, a preempted model is answered by its running fallback (and the response says so)
or refused with 503 + Retry-After, and the gateway follows the desired state as it changes.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from apply_support import stand_in, wait_for
from daemon_support import Daemon, running_daemon

CHAT = [{"role": "user", "content": "hello"}]


def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.gateway_url, api_key="unused", max_retries=0, timeout=20)


def ask(daemon: Daemon, model: str) -> httpx.Response:
    return httpx.post(
        f"{daemon.gateway_url}/chat/completions",
        json={"model": model, "messages": CHAT, "max_tokens": 4},
        timeout=20,
    )


def gateway_lists(daemon: Daemon, *model_ids: str) -> bool:
    try:
        listed = {m.id for m in client(daemon).models.list().data}
    except openai.APIError:
        return False
    return set(model_ids) <= listed


@pytest.fixture
def two_models(tmp_path: Path):
    models = [stand_in("alpha", priority=6), stand_in("beta", priority=4)]
    with running_daemon(tmp_path / "host", models) as daemon:
        daemon.wait_statuses({"alpha": "running", "beta": "running"})
        yield daemon


def test_every_model_answers_on_the_one_endpoint(two_models: Daemon) -> None:
    daemon = two_models
    assert wait_for(lambda: gateway_lists(daemon, "alpha", "beta"), 20, 0.2), daemon.log()
    for model in ("alpha", "beta"):
        raw = client(daemon).chat.completions.with_raw_response.create(
            model=model, messages=CHAT, max_tokens=4
        )
        assert raw.headers["x-reconciler-model"] == model
        assert raw.parse().choices[0].message.content


def test_an_unknown_model_is_a_404_in_openai_error_form(two_models: Daemon) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(two_models).chat.completions.create(model="nope", messages=CHAT)
    assert caught.value.body["code"] == "model_not_found"


def test_a_removed_model_leaves_the_gateway(two_models: Daemon) -> None:
    daemon = two_models
    assert wait_for(lambda: gateway_lists(daemon, "beta"), 20, 0.2)
    daemon.host.remove_model("beta")
    daemon.wait_statuses({"alpha": "running"})
    assert wait_for(lambda: ask(daemon, "beta").status_code == 404, 30, 0.2), daemon.log()
    assert ask(daemon, "alpha").status_code == 200


def test_preempted_models_fall_back_or_ask_the_client_to_retry(tmp_path: Path) -> None:
    # one 2000 MiB GPU: batch (1500) and solo (300) run; vip (1900, priority 9) then arrives and
    # preempts both; tiny (100), batch's fallback, fits beside vip and answers for batch
    mib = lambda n: {"resource_requirements": {"gpu_count": 1, "gpu_memory_mb": n}}  # noqa: E731
    models = [
        stand_in("batch", priority=3, fallback="tiny", **mib(1500)),
        stand_in("solo", priority=2, **mib(300)),
        stand_in("tiny", priority=1, enabled=False, **mib(100)),
    ]
    gpus = [{"index": 0, "name": "Simulated", "memory_mb": 2000}]
    with running_daemon(tmp_path / "host", models, gpus=gpus) as daemon:
        daemon.wait_statuses({"batch": "running", "solo": "running"})
        assert wait_for(lambda: ask(daemon, "batch").status_code == 200, 20, 0.2)
        daemon.host.write_model(stand_in("vip", priority=9, **mib(1900)))
        daemon.wait_statuses(
            {"vip": "running", "batch": "preempted", "solo": "preempted", "tiny": "running"}
        )

        def served_by_fallback() -> bool:
            response = ask(daemon, "batch")
            return response.status_code == 200 and response.headers["x-reconciler-model"] == "tiny"

        assert wait_for(served_by_fallback, 20, 0.2), daemon.log()
        refused = ask(daemon, "solo")
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"]["message"]
        assert ask(daemon, "vip").headers["x-reconciler-model"] == "vip"

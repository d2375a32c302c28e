"""The state directory's file names: one place, read by every module that touches the directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

STATE_FILE = "state.yaml"
LAST_VALID_FILE = "last-valid-desired.json"
EVENTS_FILE = "events.jsonl"
RESTART_REQUESTS = "restart-requests"
BULLETIN_FILE = "loop.json"


def namespace_for(state_dir: Path) -> str:
    """Engines are marked with this, so reconcilers with different state dirs never mix."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]

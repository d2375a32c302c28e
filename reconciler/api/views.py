"""What the API shows, read from the daemon without ever waiting for the loop.

Reads never wait for a pass: the state and the specs in force come from the reconciler's memory
(`last_state`, `last_desired`); before the first pass, from the files it left (state.yaml, parsed
once per change in the background; last-valid-desired.json).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core.plan import Plan
from reconciler.core.spec import ClusterSpec, ModelSpec
from reconciler.engines.base import Handle
from reconciler.loop.controller import LoopStats
from reconciler.loop.daemon import Daemon
from reconciler.loop.memory import figures_of
from reconciler.source import history as git_history
from reconciler.source import repo as git_repo
from reconciler.state.paths import EVENTS_FILE, LAST_VALID_FILE, STATE_FILE
from reconciler.state.statefile import CorruptState, ModelState, State, read_state

from .cache import Background, Memo, ParsedFile
from .responses import MemoryOut, RevisionOut

log = logging.getLogger("reconciler.api")

LOG_LINES = 50


@dataclass(frozen=True)
class ApiSettings:
    """Host settings of the API (flags and RECONCILER_* variables, never git)."""

    api_token: str | None = None
    webhook_secret: str | None = None
    branch: str = "main"
    """the branch whose pushes the webhook follows"""
    gateway_url: str | None = None
    """the gateway's base address (http://host:port) when `run` serves one: its traffic shows"""


def _parse_state(path: Path, _data: bytes) -> State | None:
    # read_state checks the end marker and the shape; if the file was replaced since `_data`
    # was read, the next call sees new bytes and parses once more
    try:
        return read_state(path)
    except CorruptState:
        return None


def _parse_desired(_path: Path, data: bytes) -> tuple[dict[str, ModelSpec], ClusterSpec]:
    """(specs by id, cluster) of the last valid desired state, as the reconciler recorded it."""
    doc = json.loads(data)
    specs = {m["id"]: ModelSpec.model_validate(m) for m in doc.get("models", [])}
    return specs, ClusterSpec.model_validate(doc["cluster"])


class Views:
    """What the API shows of one daemon; shared by every route."""

    def __init__(self, daemon: Daemon, settings: ApiSettings) -> None:
        self.daemon = daemon
        self.settings = settings
        self.reconciler = daemon.reconciler
        self.state_dir = Path(self.reconciler.state_dir)
        self.events_path = self.state_dir / EVENTS_FILE
        state_file = ParsedFile(self.state_dir / STATE_FILE, _parse_state)
        self._state_file = Background(state_file.get, fresh_s=0.2, stale_s=5.0)
        self._desired_file = ParsedFile(self.state_dir / LAST_VALID_FILE, _parse_desired)
        self.plan_memo = Memo(2.0)
        self.gpu_memo = Memo(2.0)
        self.history_memo = Memo(15.0)
        self.tree_memo = Memo(5.0)
        self.models_memo = Memo(1.0)
        self._commits: dict[str, RevisionOut] = {}

    # the loop

    @property
    def stats(self) -> LoopStats:
        return self.daemon.controller.stats

    def passes(self) -> int:
        return self.stats.passes

    def last_plan(self) -> Plan | None:
        result = self.stats.last_result
        return result.plan if result is not None else None

    def stopping(self) -> bool:
        """The daemon is shutting down: streams end, so that the server can stop."""
        return self.daemon.controller.stopping

    # state, specs, engines

    def state(self) -> State | None:
        in_memory = self.reconciler.last_state
        if in_memory is not None:
            return in_memory
        return self._state_file.get()

    def in_memory(self) -> bool:
        """State and specs come from the reconciler's memory: reading them costs nothing."""
        return self.reconciler.last_state is not None and self.reconciler.last_desired is not None

    def specs(self) -> Mapping[str, ModelSpec]:
        """The specs in force (the last valid desired state) by id."""
        desired = self.reconciler.last_desired
        if desired is not None:
            return desired.models
        parsed = self._desired_file.get()  # before the first pass: what the last run recorded
        return parsed[0] if parsed else {}

    def cluster(self) -> ClusterSpec | None:
        desired = self.reconciler.last_desired
        if desired is not None:
            return desired.cluster
        parsed = self._desired_file.get()
        return parsed[1] if parsed else None

    def memory(
        self, model_id: str, spec: ModelSpec | None, state: ModelState | None
    ) -> MemoryOut | None:
        """Estimated, measured and peak memory of the spec in force (or of what runs)."""
        known = figures_of(
            self.reconciler.memory, self.reconciler.requirements, model_id, spec, state
        )
        if known is None:
            return None
        return MemoryOut(
            estimated_mb=known.estimated_mb,
            measured_mb=known.measured_mb,
            peak_mb=known.peak_mb,
            measured_by=known.measured_by,
        )

    def handles(self, model_id: str) -> list[Handle]:
        """The engines of a model, as the last pass observed them."""
        return list(self.reconciler.last_handles.get(model_id, []))

    def logs(self, model_id: str, state: ModelState | None) -> list[str]:
        handles = sorted(self.handles(model_id), key=lambda h: (h.alive, h.started_at))
        engines = self.reconciler.engines
        for handle in reversed(handles):  # the live engine first, else the last one that ran
            engine = engines.get(handle.framework)
            if engine is not None:
                with contextlib.suppress(Exception):
                    return list(engine.logs(handle, LOG_LINES))
        return list(state.last_log_lines) if state else []

    # git

    def head_sha(self) -> str | None:
        try:
            return self.daemon.source.head_sha()
        except Exception:  # a repository being rewritten under us: the next request sees it
            return None

    def revision(self, state: State | None) -> RevisionOut:
        """The applied revision: the state file's commit, or, when the working tree was
        applied (no commit recorded), the commit it sits on and whether it had edits."""
        if state is not None and state.revision:
            described = self._commits.get(state.revision) or self._describe(state.revision)
            return described.model_copy(update={"dirty": state.revision_dirty})
        return self.tree_memo.get(self.head_sha(), lambda: self._describe(None))

    def _describe(self, sha: str | None) -> RevisionOut:
        """A commit (HEAD for None) read in a Repo of our own: the loop's GitPython Repo is
        not thread-safe. Found commits are kept: they never change."""
        out = RevisionOut(sha=sha, short=sha[:12] if sha else None)
        try:
            directory = self.reconciler.settings.desired_dir
            repo = git_repo.open_repo(directory)
            if repo is None:
                return out
            with contextlib.closing(repo):
                commit = git_repo.resolve(repo, sha) if sha else git_repo.head_commit(repo)
                if commit is None:
                    return out
                rev = git_repo.revision_of(commit)
                dirty = sha is None and bool(
                    git_repo.uncommitted(repo, git_repo.relative_dir(repo, directory))
                )
        except Exception:  # not a commit of this repository (yet): show what we know
            return out
        found = RevisionOut(
            sha=rev.sha,
            short=rev.short,
            dirty=dirty,
            subject=rev.subject,
            message=rev.message,
            author=rev.author,
            time=rev.time.isoformat() if rev.time else None,
        )
        if sha is not None:
            self._commits[sha] = found
        return found

    def history(self, limit: int) -> list[dict[str, Any]]:
        state = self.state()
        key = (self.head_sha(), state.revision if state else None, limit)
        return self.history_memo.get(key, lambda: self._history(limit))

    def _history(self, limit: int) -> list[dict[str, Any]]:
        try:
            record = git_history.read_applied(self.state_dir)
            entries = git_history.history(self.reconciler.settings.desired_dir, limit, record)
            return [e.to_dict() for e in entries]
        except Exception as exc:  # no repository, no history support yet: nothing to show
            log.debug("history unavailable: %s", exc)
            return []

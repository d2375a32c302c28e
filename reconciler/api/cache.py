"""Values the API computes once and shares: a file parsed once per content, a value refreshed in
the background, a value memoised per key. What is costly to compute (or to ask of the daemon) is
computed once for the requests that come together."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger("reconciler.api")

T = TypeVar("T")


class ParsedFile(Generic[T]):
    """A file parsed once per content (the file is read each time; parsed only if it changed)."""

    def __init__(self, path: Path, parse: Callable[[Path, bytes], T]) -> None:
        self.path, self.parse = path, parse
        self._lock = threading.Lock()
        self._data: bytes | None = None
        self._value: T | None = None

    def get(self) -> T | None:
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        with self._lock:
            if data != self._data:
                try:
                    self._value = self.parse(self.path, data)
                except Exception:  # torn or foreign: keep what we had; the reconciler repairs it
                    log.debug("cannot parse %s", self.path, exc_info=True)
                self._data = data
            return self._value


class Background(Generic[T]):
    """The last value of `compute`, recomputed in a thread once it is older than `fresh_s`;
    callers get the previous value meanwhile, unless it is older than `stale_s` (then they wait
    for a new one). For what is slow to compute on a big host (parsing a state file of hundreds
    of models, rendering their metrics): a request must not wait for it, nor compute it again
    for every request, yet nobody gets a value older than `stale_s`."""

    def __init__(self, compute: Callable[[], T], fresh_s: float, stale_s: float) -> None:
        self.compute, self.fresh_s, self.stale_s = compute, fresh_s, stale_s
        self._lock = threading.Lock()  # one computation at a time
        self._value: T | None = None
        self._at = -math.inf
        self._busy = False  # a background computation is queued or running

    def ready(self) -> bool:
        """get() would answer at once (from a value young enough)."""
        return time.monotonic() - self._at <= self.stale_s

    def get(self) -> T | None:
        age = time.monotonic() - self._at
        if age > self.stale_s:
            with self._lock:
                if time.monotonic() - self._at > self.stale_s:  # nobody did it meanwhile
                    self._run()
        elif age > self.fresh_s and not self._busy:
            self._busy = True
            threading.Thread(target=self._in_background, daemon=True).start()
        return self._value

    def _in_background(self) -> None:
        try:
            with self._lock:
                self._run()
        finally:
            self._busy = False

    def _run(self) -> None:
        began = time.monotonic()
        try:
            self._value = self.compute()
        finally:
            self._at = began  # a failure is retried after fresh_s, not on every request


class Memo:
    """One value computed at most once per `ttl_s` and per key, by one thread at a time."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._key: Any = object()
        self._value: Any = None
        self._at = 0.0

    def get(self, key: Any, compute: Callable[[], T]) -> T:
        with self._lock:
            if key != self._key or time.monotonic() - self._at > self.ttl_s:
                self._value = compute()
                self._key, self._at = key, time.monotonic()
            return self._value

"""The gateway's live view of the routing table: names, instances, counters, the balancer.

One event loop owns it, so nothing here locks. Instances are keyed by URL and survive reloads,
so their in-flight counts stay right when the daemon rewrites the table mid-request; an instance
that left the table stays listed (not routable) until its last request ends, so that the daemon
can wait for it to drain.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from reconciler.gateway.affinity import Affinity, overloaded
from reconciler.gateway.routes import RouteModel, Routes

DOWN_FOR_S = 1.0
"""after a connection error an instance is tried last for this long (the daemon may not have
noticed yet that it died)"""
PEER_DOWN_FOR_S = 5.0
"""after a connection error another host's gateway gets no request for this long (the daemon
probes it this often: by then its table has left the host out, or it answers again)"""


@dataclass(eq=False)
class Instance:
    url: str
    model: str
    key: str = ""
    """unique in the table: the URL of an engine; a remote endpoint's or another host's
    gateway's, with `#<model>` (models share them, each with its own count)"""
    id: str = ""
    """the instance's id, named in X-Reconciler-Instance (`gemma3-270m.1`)"""
    inflight: int = 0
    unanswered: int = 0
    """requests sent to it that have had no byte back yet (they wait, as clients see it)"""
    served: int = 0
    draining: bool = False
    listed: bool = True
    down_until: float = 0.0
    last_byte_at: float | None = None
    """monotonic time it last sent bytes to a client (the daemon's health checks: a busy
    engine is not a dead one)"""
    host: str = ""
    """the host that serves it ("" = this one)"""
    peer: bool = False
    """another host's gateway: a forwarded request goes there"""

    def __post_init__(self) -> None:
        self.key = self.key or self.url
        self.id = self.id or self.model

    @property
    def routable(self) -> bool:
        return self.listed and not self.draining


@dataclass(eq=False)
class Entry:
    route: RouteModel
    instances: list[Instance] = field(default_factory=list)
    next_index: int = 0
    """round-robin position among ties"""
    waiting: int = 0
    waiting_since: float | None = None
    """monotonic time the oldest waiting request started to wait (for cold-start seconds)"""
    last_request_at: float | None = None
    """wall-clock time a request naming this model last arrived or ended (the daemon's idle
    clock for an on-demand model)"""
    affinity: Affinity = field(default_factory=Affinity)
    """prefix key -> the instance that served it last (routing: prefix)"""

    def by_prefix(self) -> bool:
        """Whether a request's prefix key plays a part in picking its instance."""
        return self.route.routing == "prefix" and len(self.instances) > 1

    @property
    def id(self) -> str:
        return self.route.id

    @property
    def status(self) -> str:
        return self.route.status

    def ready(self) -> bool:
        return self.route.status == "running" and any(i.routable for i in self.instances)

    def local_status(self) -> str:
        """What this host alone offers (a forwarded request may use nothing else)."""
        return self.route.local_status or self.route.status

    def ready_here(self) -> bool:
        """Ready on this host's own instances."""
        return self.local_status() == "running" and any(
            i.routable and not i.peer for i in self.instances
        )

    def peer_keys(self) -> set[str]:
        """Its instances on other hosts: what a forwarded request must not be sent to."""
        return {i.key for i in self.instances if i.peer}

    def full(self) -> bool:
        """A remote model with max_concurrency requests in flight: the next one waits."""
        remote = self.route.remote
        if remote is None or remote.max_concurrency is None:
            return False
        return sum(i.inflight for i in self.instances) >= remote.max_concurrency

    def waiting_for_answer(self) -> int:
        """Requests that wait for this model as clients see it: in its queue, or sent to it
        with no byte back yet (queued inside its engine): what overflow's queue_over counts."""
        return self.waiting + sum(i.unanswered for i in self.instances)


class Table:
    def __init__(self) -> None:
        self.routes = Routes()
        self.entries: dict[str, Entry] = {}
        self.names: dict[str, Entry] = {}
        """model ids and aliases"""
        self.instances: dict[str, Instance] = {}
        self.changed = asyncio.Event()
        """set (and replaced) on every reload: queued requests look again"""
        self.room: dict[str, asyncio.Event] = {}
        """per remote model with max_concurrency: set (and replaced) when a request to it ends
        or the table reloads, so that a request waiting for a free slot looks again"""

    def load(self, routes: Routes) -> list[tuple[str, float]]:
        """Swap in a new table; returns (model, seconds) for models that became ready while
        requests waited for them (their cold start as clients felt it)."""
        now = time.monotonic()
        old_entries = self.entries
        entries: dict[str, Entry] = {}
        listed: set[str] = set()
        cold_starts = []
        for model_id, route in routes.models.items():
            previous = old_entries.get(model_id)
            entry = Entry(route)
            if previous is not None:
                entry.next_index = previous.next_index
                entry.waiting = previous.waiting
                entry.waiting_since = previous.waiting_since
                entry.last_request_at = previous.last_request_at
                entry.affinity = previous.affinity
            for spec in route.instances:
                shared = route.remote is not None or spec.peer
                key = f"{spec.url}#{model_id}" if shared else spec.url
                instance = self.instances.get(key)
                if instance is None or instance.model != model_id:
                    instance = Instance(spec.url, model_id, key, host=spec.host, peer=spec.peer)
                    self.instances[key] = instance
                instance.draining = spec.draining
                instance.id = spec.id or model_id
                instance.listed = True
                entry.instances.append(instance)
                listed.add(key)
            entries[model_id] = entry
            if entry.waiting_since is not None and entry.ready():
                cold_starts.append((model_id, now - entry.waiting_since))
                entry.waiting_since = None
        for key, instance in list(self.instances.items()):
            if key not in listed:
                instance.listed = False
                if instance.inflight == 0:
                    del self.instances[key]
        names: dict[str, Entry] = {}
        for entry in entries.values():
            for alias in entry.route.aliases:
                names.setdefault(alias, entry)
        for model_id, entry in entries.items():
            names[model_id] = entry  # an id wins over an alias (validation forbids the clash)
        self.routes, self.entries, self.names = routes, entries, names
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()
        for model_id in list(self.room):
            self.freed(model_id)
        return cold_starts

    def room_event(self, model_id: str) -> asyncio.Event:
        """What a request waiting for a free slot of `model_id` waits on."""
        event = self.room.get(model_id)
        if event is None:
            event = self.room[model_id] = asyncio.Event()
        return event

    def freed(self, model_id: str) -> None:
        """A slot of `model_id` may be free: its waiting requests look again."""
        event = self.room.pop(model_id, None)
        if event is not None:
            event.set()

    def resolve(self, name: str) -> Entry | None:
        return self.names.get(name)

    def fallback_of(self, entry: Entry) -> Entry | None:
        """The model's fallback when that is ready to answer now."""
        fallback = self.entries.get(entry.route.fallback or "")
        return fallback if fallback is not None and fallback.ready() else None

    @staticmethod
    def pick(entry: Entry, exclude: set[str], prefix: int | None = None) -> Instance | None:
        """Least outstanding requests; ties go round-robin; recently failed instances last.
        With a prefix key (routing: prefix), the instance that served that key last, unless it
        is overloaded, down or excluded (gateway.affinity); the key then moves to the pick."""
        candidates = entry.instances
        count = len(candidates)
        if count == 0:
            return None
        now = time.monotonic()
        best: Instance | None = None
        best_key: tuple[bool, int] = (True, 0)
        best_index = 0
        start = entry.next_index % count
        for step in range(count):
            index = (start + step) % count
            instance = candidates[index]
            if not instance.routable or instance.key in exclude:
                continue
            down = instance.down_until > now
            if down and instance.peer:
                continue  # a host that refused: skipped until it answers again (the daemon)
            key = (down, instance.inflight)
            if best is None or key < best_key:
                best, best_key, best_index = instance, key, index
        if best is None:
            return None
        if prefix is not None:
            sticky = _sticky(entry, prefix, exclude, now)
            if sticky is not None and not overloaded(sticky.inflight, best_key[1]):
                entry.affinity.served(prefix, sticky.key)
                return sticky  # the round-robin position stays: it was not a balancing pick
            entry.affinity.served(prefix, best.key)
        entry.next_index = best_index + 1
        return best

    def touch(self, model_id: str) -> None:
        """A request for `model_id` arrived or ended now."""
        entry = self.entries.get(model_id)
        if entry is not None:
            entry.last_request_at = time.time()

    def retire_if_idle(self, instance: Instance) -> None:
        if not instance.listed and instance.inflight == 0:
            self.instances.pop(instance.key, None)

    def inflight_report(self) -> dict[str, object]:
        now = time.monotonic()
        return {
            "generation": self.routes.generation,
            "instances": {
                key: {
                    "model": i.model,
                    "remote": i.key != i.url,  # not an engine of this host
                    "peer": i.peer,
                    "inflight": i.inflight,
                    "served": i.served,
                    "draining": i.draining,
                    "listed": i.listed,
                    # an age, not a time: the daemon's clock is not this process's monotonic one
                    "last_byte_age_s": None if i.last_byte_at is None else now - i.last_byte_at,
                }
                for key, i in sorted(self.instances.items())
            },
            "models": {
                model_id: {
                    "status": e.local_status(),  # the daemon's business: this host's engines
                    "inflight": (inflight := sum(i.inflight for i in e.instances)),
                    "queued": e.waiting,
                    "wanted": inflight > 0 or e.waiting > 0,
                    "last_request_at": e.last_request_at,
                }
                for model_id, e in sorted(self.entries.items())
            },
        }


def _sticky(entry: Entry, prefix: int, exclude: set[str], now: float) -> Instance | None:
    """The routable instance of `entry` that served `prefix` last, if any and not down."""
    key = entry.affinity.get(prefix)
    if key is None or key in exclude:
        return None
    for instance in entry.instances:
        if instance.key == key:
            return instance if instance.routable and instance.down_until <= now else None
    return None

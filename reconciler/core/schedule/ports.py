"""Ports during a pass: fixed ports, the ports running engines keep, and the port range."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from reconciler.core.schedule.model import Demand, Running, by_id


class Ports:
    """A fixed port belongs to its model; a running engine keeps its port; any other model gets
    the lowest port of the range that no fixed-port model and no running engine holds.

    When the range is exhausted, a model may take the port of a running engine that holds no
    place in this pass (the plan stops it before it starts anything). Otherwise a port freed later
    in the pass would have served a model refused earlier, and the next pass would differ."""

    def __init__(
        self, port_range: tuple[int, int], demands: Sequence[Demand], running: Sequence[Running]
    ) -> None:
        self.first, self.last = port_range
        self.fixed: dict[int, str] = {}
        for d in sorted(demands, key=by_id):
            if d.port is not None:
                self.fixed.setdefault(d.port, d.id)
        # an engine whose model now has another fixed port gives its port up whatever happens
        # (it moves or it stops): the port is free for others from the start of the pass
        fixed_of = {d.id: d.port for d in demands}
        self.held: dict[int, str] = {}
        for r in sorted(running, key=by_id):
            if r.port is not None and fixed_of.get(r.id) in (None, r.port):
                self.held.setdefault(r.port, r.id)
        self.running_port = {r.id: r.port for r in running}
        self.given: dict[str, int] = {}
        self.used: set[int] = set()
        self.next = self.first

    def own(self, d: Demand) -> int | None:
        """The port `d` has without allocating one: its fixed port, or the one it runs on."""
        if d.port is not None:
            return d.port
        port = self.running_port.get(d.id)
        if port is None or self.held.get(port) != d.id or port in self.fixed or port in self.used:
            return None
        return port

    def claim(self, model: str) -> int | None:
        """The port in the range that a running engine would give up if it were preempted."""
        port = self.running_port.get(model)
        if port is None or not self.first <= port <= self.last:
            return None
        if self.held.get(port) != model or port in self.fixed or port in self.used:
            return None
        return port

    def choose(self, d: Demand, placeless: Callable[[str], bool]) -> int | None:
        """The port `d` would get now, without taking it."""
        port = self.given.get(d.id) or self.own(d) or self._lowest()
        if port is not None:
            return port
        return next((p for p in sorted(self.held) if self._free_of(p, placeless)), None)

    def take(self, d: Demand, port: int) -> int:
        self.given[d.id] = port
        self.used.add(port)
        return port

    def exhausted(self) -> str:
        return f"no free port in {self.first}-{self.last}"

    def _lowest(self) -> int | None:
        # ports are only ever taken during a pass: everything below `next` stays taken
        while self.next <= self.last and (
            self.next in self.used or self.next in self.fixed or self.next in self.held
        ):
            self.next += 1
        return self.next if self.next <= self.last else None

    def _free_of(self, port: int, placeless: Callable[[str], bool]) -> bool:
        if not self.first <= port <= self.last or port in self.used or port in self.fixed:
            return False
        return placeless(self.held[port])

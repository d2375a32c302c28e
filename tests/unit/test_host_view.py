"""One host's view of a fleet (core.fleet.host_view): the models it runs, its own host fields,
and the rest of the fleet in `elsewhere`. Properties over generated fleets, with the placement
table the generator wrote as the oracle."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.cluster import ClusterSpec, DeclaredGPU, HostSpec
from reconciler.core.desired import DesiredState
from reconciler.core.fleet import host_view
from reconciler.core.spec import ModelSpec
from reconciler.loop.records import Records

HOSTS = ["a", "b", "c", "d"]


def engine(model_id: str, hosts: list[str]) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": model_id, "framework": "llama_cpp", "model_path": "/m.gguf", "hosts": hosts}
    )


def remote(model_id: str) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": model_id, "framework": "remote", "endpoint": "https://api.example.com/v1"}
    )


def host(i: int) -> HostSpec:
    return HostSpec(
        gpus=[DeclaredGPU(index=g, memory_mb=1000 * (i + 1)) for g in range(i + 1)],
        port_range=(9000 + 10 * i, 9009 + 10 * i),
        gateway=f"http://10.0.0.{i + 1}:8000",
    )


@st.composite
def fleets(draw: st.DrawFn) -> tuple[DesiredState, dict[str, list[str]], set[str]]:
    """A valid fleet, the table model -> hosts it was written to run on, and its remote ids."""
    names = draw(st.lists(st.sampled_from(HOSTS), min_size=1, max_size=4, unique=True))
    table = {
        f"m{i}": draw(
            st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True)
        )
        for i in range(draw(st.integers(0, 6)))
    }
    remotes = {f"r{i}" for i in range(draw(st.integers(0, 2)))}
    models = {m: engine(m, hs) for m, hs in table.items()} | {r: remote(r) for r in remotes}
    hosts = {name: host(HOSTS.index(name)) for name in names}
    cluster = ClusterSpec()
    return DesiredState(models, cluster, "rev", hosts=hosts), table, remotes


@given(fleets())
def test_a_model_is_in_exactly_the_views_of_the_hosts_it_lists(
    fleet: tuple[DesiredState, dict[str, list[str]], set[str]],
) -> None:
    desired, table, remotes = fleet
    for name in desired.hosts:
        view = host_view(desired, name)
        mine = {m for m, hs in table.items() if name in hs}
        assert set(view.models) == mine | remotes
        assert set(view.elsewhere) == set(table) - mine
        assert view.host == name and view.hosts == desired.hosts


@given(fleets())
def test_the_views_together_hold_every_engine_model_and_each_holds_every_remote_one(
    fleet: tuple[DesiredState, dict[str, list[str]], set[str]],
) -> None:
    desired, table, remotes = fleet
    views = [host_view(desired, name) for name in desired.hosts]
    engines = {m for v in views for m, s in v.models.items() if not s.is_remote}
    assert engines == set(table)
    for view in views:
        assert {m for m, s in view.models.items() if s.is_remote} == remotes


@given(fleets())
def test_a_view_carries_its_hosts_gpus_and_ports(
    fleet: tuple[DesiredState, dict[str, list[str]], set[str]],
) -> None:
    desired, _, _ = fleet
    for name in desired.hosts:
        i = HOSTS.index(name)
        cluster = host_view(desired, name).cluster
        assert [g.memory_mb for g in cluster.gpus] == [1000 * (i + 1)] * (i + 1)
        assert cluster.port_range == (9000 + 10 * i, 9009 + 10 * i)


def test_a_repository_without_hosts_is_its_own_view() -> None:
    desired = DesiredState({"m": engine("m", ["a"])}, ClusterSpec())
    assert host_view(desired, "anything") is desired


def test_a_hosts_view_survives_the_last_valid_file(tmp_path: Path) -> None:
    """An invalid pass falls back on the last valid desired state: in a fleet it is still this
    host's view, with the other hosts and what they run (the gateway forwards to them)."""
    fleet = DesiredState(
        {"m": engine("m", ["a"]), "n": engine("n", ["b"]), "r": remote("r")},
        ClusterSpec(),
        "rev",
        hosts={"a": host(0), "b": host(1)},
    )
    view = host_view(fleet, "a")
    records = Records(tmp_path, clock=lambda: 0.0)
    records.remember_valid(view)
    back = records.last_valid()
    assert back is not None
    assert (back.host, sorted(back.models), sorted(back.elsewhere)) == ("a", ["m", "r"], ["n"])
    assert back.hosts == view.hosts and back.cluster == view.cluster

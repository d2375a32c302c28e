"""Where an engine instance changes shape, no field is dropped unseen.

One record (reconciler.core.instance.InstanceRecord) runs from observation to the state file.
Two boundaries have shapes of their own: an engine's `Handle` (what the engines report) and its
record on disk (engines/<id>.json). Each converter names its fields; these tests hold the names
to the types, so a field added on one side is carried on purpose or fails here.
"""

from __future__ import annotations

import dataclasses
import json

from reconciler.core.instance import InstanceRecord, Status
from reconciler.engines.base import Handle
from reconciler.engines.identity import EngineRecord
from reconciler.loop.records import HANDLE_ONLY, HANDLE_TO_RECORD, record_from_handle
from reconciler.state.reading import read_state
from reconciler.state.statefile import ModelRecord, State, write_state

# one value per Handle field, none of them its default
HANDLE_VALUES: dict[str, object] = {
    "model_id": "qwen",
    "framework": "llama_cpp",
    "spec_hash": "abc123",
    "port": 8107,
    "gpus": (1, 3),
    "memory_mb": 4321,
    "started_at": 1700000000.5,
    "pid": 4242,
    "create_time": 1700000000.25,
    "container_id": "c0ffee",
    "alive": False,
    "exit_code": -9,
    "log_path": "/var/lib/reconciler/logs/qwen.log",
}


def names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_the_values_name_every_field_of_a_handle() -> None:
    assert set(HANDLE_VALUES) == names(Handle), "give the new Handle field a value here"


def test_every_field_of_a_handle_is_carried_into_the_record_or_left_behind_for_a_reason() -> None:
    carried, left = set(HANDLE_TO_RECORD), set(HANDLE_ONLY)
    assert not carried & left
    assert carried | left == names(Handle), "a Handle field neither carried nor left behind"
    assert carried <= names(InstanceRecord)


def test_adopting_an_engine_carries_where_it_runs_and_from_what_spec() -> None:
    handle = Handle(**HANDLE_VALUES)  # type: ignore[arg-type]  # the values are the fields' own
    record = record_from_handle(InstanceRecord("qwen", Status.stopped), handle, now=5.0)
    for name in HANDLE_TO_RECORD:
        assert getattr(record, name) == getattr(handle, name), name
    assert (record.status, record.last_transition) == (Status.starting, 5.0)
    ready = record_from_handle(InstanceRecord("qwen", Status.running), handle, now=5.0)
    assert ready.status == Status.running, "an engine that answered stays running"


def test_an_engines_disk_record_keeps_every_field_of_its_handle(tmp_path) -> None:
    handle = Handle(**HANDLE_VALUES)  # type: ignore[arg-type]  # the values are the fields' own
    record = EngineRecord("ns", ("llama-server", "--port", "8107"), handle)
    text = record.to_json()
    assert set(json.loads(text)) == names(Handle) | {"namespace", "argv"}
    assert EngineRecord.from_json(text) == record


def test_an_older_disk_record_without_the_later_keys_still_reads() -> None:
    """An engine started by the previous release may still run: its record lacks log_path."""
    old = {k: v for k, v in HANDLE_VALUES.items() if k not in ("log_path", "exit_code", "alive")}
    text = json.dumps({**old, "gpus": [1, 3], "namespace": "ns", "argv": ["x"]})
    read = EngineRecord.from_json(text)
    assert read.handle.alive and read.handle.log_path is None and read.handle.gpus == (1, 3)


def test_the_state_files_shape_has_exactly_the_records_fields() -> None:
    assert set(ModelRecord.model_fields) == names(InstanceRecord)


def test_every_field_of_a_record_survives_the_state_file(tmp_path) -> None:
    record = InstanceRecord(
        id="qwen",
        status=Status.error,
        pid=4242,
        container_id="c0ffee",
        port=8107,
        gpus=(1, 3),
        memory_mb=4321,
        spec_hash="abc123",
        restarts=2,
        restarts_total=9,
        last_error="engine exited with code 1",
        last_log_lines=("oom", "bye"),
        last_transition=17.5,
        next_retry_at=99.5,
        given_up=True,
        started_at=12.25,
        probe_failures=3,
    )
    defaults = InstanceRecord("qwen")
    unset = [
        f.name
        for f in dataclasses.fields(record)
        if getattr(record, f.name) == getattr(defaults, f.name)
    ]
    assert unset == ["id"], "give every field a value other than its default"
    path = tmp_path / "state.yaml"
    write_state(path, State(models={"qwen": record}))
    read = read_state(path)
    assert read is not None and read.models == {"qwen": record}

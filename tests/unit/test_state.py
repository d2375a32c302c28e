"""The state file: round trip, atomic replacement under readers and crashes, corruption
detection and recovery, and the observed-state files of `reconciler plan --observed`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.desired import Problem
from reconciler.core.instance import InstanceRecord, Status
from reconciler.state import reading, statefile
from reconciler.state.reading import (
    CorruptState,
    ObservedFileError,
    read_observed,
    read_state,
    read_state_or_recover,
)
from reconciler.state.statefile import END_MARKER, State, render_state, to_observed, write_state

REPO = Path(__file__).resolve().parents[2]


def sample_state() -> State:
    return State(
        revision="3f2a9c1",
        revision_dirty=True,
        applied_at=1732530000.25,
        models={
            "qwen2-7b": InstanceRecord(
                id="qwen2-7b",
                status=Status.running,
                pid=4242,
                port=8100,
                gpus=(0, 1),
                memory_mb=9000,
                spec_hash="0123456789abcdef",
                restarts=1,
                restarts_total=7,
                last_error="exited with code 1",
                last_log_lines=("ggml_cuda_init: found 2 CUDA devices", "key: value", "123"),
                last_transition=1732529990.5,
                next_retry_at=None,
                started_at=1732529980.0,
            ),
            "web": InstanceRecord(
                id="web", status=Status.error, container_id="c0ffee", given_up=True
            ),
        },
        problems=[Problem("desired-state/models/a.yaml", 4, "port", "port 80 is taken").to_dict()],
    )


# ---- round trip -----------------------------------------------------------------------------


def test_round_trip(tmp_path):
    path = tmp_path / "state.yaml"
    write_state(path, sample_state())
    assert read_state(path) == sample_state()


def test_the_file_is_readable_yaml_for_people(tmp_path):
    path = tmp_path / "state.yaml"
    write_state(path, sample_state())
    text = path.read_text()
    assert "version: 1\n" in text
    assert "    status: running\n" in text
    assert "    gpus: [0, 1]\n" in text
    assert "    pid: null\n" in text  # in "web"
    assert text.endswith(END_MARKER + "\n")


def test_absent_file_is_none(tmp_path):
    assert read_state(tmp_path / "none.yaml") is None
    assert read_state_or_recover(tmp_path / "none.yaml") == (None, None)


finite = st.floats(allow_nan=False, allow_infinity=False)
# text that YAML 1.1 and 1.2 readers take for something else when it is written plain
TRICKY = [
    "on", "yes", "No", "OFF", "y", "1e3", "0o17", "0x1F", "017", ".inf", "-.5", "+1", "1_000",
    "~", "null", "", " ", "2026-11-30", "12:30:00", "- x", "a: b", "#c", "&a", "*b", "!t",
    "%x", "@", "`", "|", ">", "'", '"', "\u2028", "x\x85y", "\ufeffbom", "tab\there",
]  # fmt: skip
text = st.text() | st.sampled_from(TRICKY)
model_states = st.builds(
    InstanceRecord,
    id=st.just("m"),
    status=st.sampled_from(Status),
    pid=st.none() | st.integers(1, 2**22),
    container_id=st.none() | text,
    port=st.none() | st.integers(1, 65535),
    gpus=st.lists(st.integers(0, 15), max_size=4).map(tuple),
    memory_mb=st.integers(0, 10**6),
    spec_hash=st.none() | text,
    restarts=st.integers(0, 100),
    restarts_total=st.integers(0, 10**6),
    last_error=st.none() | text,
    last_log_lines=st.lists(text, max_size=5).map(tuple),
    last_transition=finite,
    next_retry_at=st.none() | finite,
    given_up=st.booleans(),
    started_at=st.none() | finite,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=model_states, revision=st.none() | text, message=text)
def test_any_state_round_trips(tmp_path, model, revision, message):
    """Log lines and errors are arbitrary engine output: any text must survive."""
    problems = [Problem("models/m.yaml", 1, "port", message).to_dict()]
    state = State(revision=revision, models={"m": model}, problems=problems)
    path = tmp_path / "state.yaml"
    write_state(path, state)
    assert read_state(path) == state
    # every writer's text is read back the same by every reader: libyaml (YAML 1.1) writing,
    # ruamel (1.2) reading, and the other way round; the fallbacks when PyYAML has no libyaml
    with mock.patch.object(reading, "_CSafeLoader", None):
        assert read_state(path) == state
    with mock.patch.object(statefile, "_StateDumper", None):
        write_state(path, state)
    assert read_state(path) == state
    with mock.patch.object(reading, "_CSafeLoader", None):
        assert read_state(path) == state


# ---- atomic replacement ---------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from reconciler.core.instance import InstanceRecord
    from reconciler.state.statefile import State, write_state

    path, count, LOG_LINES = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    i = 0
    while count < 0 or i < count:
        # The revision says how many models the state holds: a reader can check each file.
        n = i % 7 + 1
        lines = [f"line {j} of write {i} " + "x" * 80 for j in range(LOG_LINES)]
        models = {f"m{k}": InstanceRecord(f"m{k}", last_log_lines=tuple(lines)) for k in range(n)}
        write_state(path, State(revision=str(i), models=models))
        i += 1
        if i == 1:
            print("first", flush=True)
    """
)


# Tens of KiB per file: far more than one write() call, so a non-atomic writer would be caught.
LOG_LINES = 60


def start_writer(path: Path, count: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(count), str(LOG_LINES)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def assert_complete(state: State | None) -> None:
    assert state is not None
    assert len(state.models) == int(state.revision) % 7 + 1
    assert all(len(m.last_log_lines) == LOG_LINES for m in state.models.values())


def test_readers_never_see_a_half_written_file(tmp_path):
    path = tmp_path / "state.yaml"
    writer = start_writer(path, 80)
    try:
        assert writer.stdout.readline() == "first\n"
        revisions = set()
        while writer.poll() is None:
            state = read_state(path)  # CorruptState here would be a torn file
            assert_complete(state)
            revisions.add(state.revision)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == 0
    # The reader really ran alongside the writer, through replacements (how many depends on the
    # machine's load: one replacement seen is enough to have raced the rename)
    assert len(revisions) >= 2


def test_a_writer_killed_mid_write_leaves_a_complete_file(tmp_path):
    path = tmp_path / "state.yaml"
    for delay in (0.05, 0.13, 0.29, 0.41):
        writer = start_writer(path, -1)
        try:
            assert writer.stdout.readline() == "first\n"
            time.sleep(delay)
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        state, problem = read_state_or_recover(path)
        assert problem is None
        assert_complete(state)
    # Temp files of killed writers are swept away at recovery.
    assert [p.name for p in tmp_path.iterdir()] == ["state.yaml"]


# ---- corruption -----------------------------------------------------------------------------


def corrupt_files(valid: str) -> dict[str, bytes]:
    lines = valid.splitlines(keepends=True)
    return {
        "garbage": b"\x00\x9f\x92\x96 binary \xff\xfe",
        "empty": b"",
        "half": valid[: len(valid) // 2].encode(),
        # Cut at a line boundary: still valid YAML, only the end marker shows the loss.
        "cut_at_a_line": "".join(lines[: len(lines) // 2]).encode(),
        "yaml_error": f"version: 1\nmodels: {{a: [\n{END_MARKER}\n".encode(),
        "version_2": valid.replace("version: 1", "version: 2").encode(),
        "no_version": valid.replace("version: 1\n", "").encode(),
        "models_is_a_list": f"version: 1\nmodels: [a, b]\n{END_MARKER}\n".encode(),
        "bad_field_type": valid.replace("memory_mb: 9000", "memory_mb: lots").encode(),
        "unknown_status": valid.replace("status: running", "status: runing").encode(),
    }


VALID = render_state(sample_state())


@pytest.mark.parametrize("kind", sorted(corrupt_files(VALID)))
def test_corrupt_files_are_detected_moved_aside_and_reported(tmp_path, kind):
    content = corrupt_files(VALID)[kind]
    path = tmp_path / "state.yaml"
    path.write_bytes(content)

    with pytest.raises(CorruptState):
        read_state(path)
    state, reason = read_state_or_recover(path)

    assert state is None
    assert reason and "moved aside to state.yaml.corrupt-" in reason
    assert not path.exists()
    (aside,) = tmp_path.glob("state.yaml.corrupt-*")
    assert aside.read_bytes() == content  # kept for a post-mortem, byte for byte
    # The next pass writes a fresh file, which reads back.
    write_state(path, State())
    assert read_state(path) == State()


def test_corruption_reasons_say_what_is_wrong(tmp_path):
    path = tmp_path / "state.yaml"
    expectations = {
        "half": "no end marker",
        "version_2": "version 2; this reconciler reads version 1",
        "bad_field_type": "models.qwen2-7b.memory_mb: expected a whole number, found 'lots'",
        "unknown_status": "unknown status 'runing'",
        "garbage": "not UTF-8",
    }
    for kind, expected in expectations.items():
        path.write_bytes(corrupt_files(VALID)[kind])
        with pytest.raises(CorruptState, match=expected):
            read_state(path)


def test_two_corrupt_files_in_the_same_second_are_both_kept(tmp_path):
    path = tmp_path / "state.yaml"
    for content in (b"one", b"two"):
        path.write_bytes(content)
        read_state_or_recover(path)
    kept = sorted(p.read_bytes() for p in tmp_path.glob("state.yaml.corrupt-*"))
    assert kept == [b"one", b"two"]


def test_an_unreadable_file_is_not_taken_for_corrupt(tmp_path):
    """An I/O error says nothing about the content: raise it, move nothing aside."""
    path = tmp_path / "state.yaml"
    path.mkdir()  # unreadable as a file, whoever runs the test (root ignores chmod 0)
    with pytest.raises(IsADirectoryError):
        read_state_or_recover(path)
    assert path.is_dir()
    assert not list(tmp_path.glob("state.yaml.corrupt-*"))


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.yaml"
    write_state(path, sample_state())

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_state(path, State(revision="new"))
    monkeypatch.undo()
    assert read_state(path) == sample_state()
    assert [p.name for p in tmp_path.iterdir()] == ["state.yaml"]


# ---- observed-state files -------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "observed.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_hand_written_observed_file(tmp_path):
    path = write(
        tmp_path,
        """
        models:
          qwen2-7b: {gpus: [0], memory_mb: 9000}
          llama-8b:
            status: preempted
          tiny:
        """,
    )
    assert read_observed(path) == {
        "qwen2-7b": InstanceRecord("qwen2-7b", Status.running, gpus=(0,), memory_mb=9000),
        "llama-8b": InstanceRecord("llama-8b", Status.preempted),
        "tiny": InstanceRecord("tiny", Status.running),
    }


def test_full_observed_file_with_spec_hash_and_single_gpu(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        models:
          a: {status: starting, gpus: 1, memory_mb: 100, port: 8101, spec_hash: abc}
        """,
    )
    assert read_observed(path)["a"] == InstanceRecord(
        "a", Status.starting, gpus=(1,), memory_mb=100, port=8101, spec_hash="abc"
    )


def test_a_state_file_is_an_observed_file(tmp_path):
    path = tmp_path / "state.yaml"
    write_state(path, sample_state())
    assert read_observed(path) == to_observed(sample_state())
    assert to_observed(sample_state())["qwen2-7b"] == InstanceRecord(
        "qwen2-7b",
        Status.running,
        gpus=(0, 1),
        memory_mb=9000,
        port=8100,
        spec_hash="0123456789abcdef",
        last_error="exited with code 1",
    )


def test_an_empty_observed_file_means_nothing_runs(tmp_path):
    assert read_observed(write(tmp_path, "")) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:\n  a: {status: runing}\n", "observed.yaml:2: models.a.status: unknown status"),
        ("models:\n  a:\n    gpus: [zero]\n", "observed.yaml:3: models.a.gpus: expected a list"),
        ("models:\n  a: {memroy_mb: 9000}\n", "models.a.memroy_mb: unknown field"),
        ("models:\n  a: {memory_mb: -1}\n", "models.a.memory_mb: must not be negative"),
        ("version: 2\nmodels: {}\n", "observed.yaml:1: version: version 2; expected 1"),
        ("- a\n- b\n", "expected a mapping, found a list"),
        ("models:\n  a: {gpus: [0]\n", "not valid YAML"),
        ("models:\n  a: {id: b}\n", "id 'b' under key 'a'"),
        ("models:\n  a: [1]\n", "observed.yaml:2: models.a: expected a mapping"),
    ],
)
def test_malformed_observed_files_are_clear_errors(tmp_path, text, message):
    with pytest.raises(ObservedFileError, match=re.escape(message)):
        read_observed(write(tmp_path, text))


def test_missing_observed_file_is_a_clear_error(tmp_path):
    with pytest.raises(ObservedFileError, match=r"observed\.yaml: cannot read"):
        read_observed(tmp_path / "observed.yaml")

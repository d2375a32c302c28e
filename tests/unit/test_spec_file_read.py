"""A spec file is read whole however its size changes between the check and the read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.core.desired import Problem
from reconciler.source import load


def grows_after_fstat(monkeypatch: pytest.MonkeyPatch, seen: int) -> None:
    """os.fstat reports `seen` bytes: the file grew after it was checked."""
    real = os.fstat

    def fstat(fd: int) -> os.stat_result:
        info = real(fd)
        return os.stat_result((*info[:6], seen, *info[7:]))

    monkeypatch.setattr(load.os, "fstat", fstat)


def test_a_file_that_grew_after_the_check_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.yaml"
    text = "id: m\n" + "# comment\n" * 500
    path.write_text(text)
    grows_after_fstat(monkeypatch, seen=10)
    assert load.read_spec_file(path, tmp_path, "m.yaml") == text


def test_a_file_that_grew_past_the_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("#" * (load.MAX_SPEC_BYTES + 5))
    grows_after_fstat(monkeypatch, seen=100)
    found = load.read_spec_file(path, tmp_path, "m.yaml")
    assert isinstance(found, Problem) and "a spec may hold at most" in found.message, found

"""Learned reservations: which figure the planner reserves, and the store that survives restarts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.estimate import (
    MemoryFigures,
    grown_past,
    record_measurement,
    reservation,
    with_margin,
)
from reconciler.loop.memory import MEMORY_FILE, read_learned, write_learned


def test_declared_memory_wins_over_everything_learned():
    figures = MemoryFigures(estimated_mb=900, measured_mb=400, peak_mb=500, measured_by="nvml")
    chosen = reservation(2000, figures)
    assert (chosen.mb, chosen.basis) == (2000, "declared")


def test_without_measurement_the_estimate_is_reserved():
    chosen = reservation(None, MemoryFigures(estimated_mb=789))
    assert (chosen.mb, chosen.basis) == (789, "estimated")


def test_an_over_estimate_frees_room_once_measured():
    chosen = reservation(None, MemoryFigures(estimated_mb=8000, peak_mb=3000, measured_by="nvml"))
    assert chosen.basis == "measured"
    assert 3000 < chosen.mb < 8000
    assert "8000" in chosen.reason and "3000" in chosen.reason


def test_an_under_estimate_stops_overbooking_once_measured():
    chosen = reservation(None, MemoryFigures(estimated_mb=1000, peak_mb=1500, measured_by="rss"))
    assert chosen.mb > 1500
    assert "resident memory" in chosen.reason


def test_nothing_known_is_unknown():
    assert reservation(None, None).mb is None


@given(st.integers(min_value=0, max_value=10**7))
def test_margin_is_ten_percent_with_a_floor(peak):
    added = with_margin(peak) - peak
    assert added >= 64
    assert added >= peak / 10
    assert added <= max(peak / 10 + 1, 64)


@given(st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=20))
def test_peak_is_the_largest_measurement_and_latest_is_the_last(samples):
    figures = None
    for sample in samples:
        figures = record_measurement(figures, sample, "rss")
    assert figures.peak_mb == max(samples)
    assert figures.measured_mb == samples[-1]


def test_estimate_survives_measurements():
    figures = record_measurement(MemoryFigures(estimated_mb=700), 500, "nvml")
    assert figures.estimated_mb == 700


@pytest.mark.parametrize(
    ("reserved", "measured", "grown"),
    [(1000, 1001, True), (1000, 1000, False), (None, 5, False), (1000, None, False)],
)
def test_growth_past_the_reservation(reserved, measured, grown):
    assert grown_past(reserved, measured) is grown


def test_learned_figures_survive_a_restart(tmp_path):
    learned = {"m": {"abc": MemoryFigures(700, 512, 530, "rss")}}
    write_learned(tmp_path, learned)
    assert read_learned(tmp_path) == learned


def test_a_corrupt_memory_file_is_nothing_learned(tmp_path):
    (tmp_path / MEMORY_FILE).write_text("{not json")
    assert read_learned(tmp_path) == {}
    (tmp_path / MEMORY_FILE).write_text(
        json.dumps({"version": 1, "models": {"m": {"h": {"peak_mb": "lots"}}}})
    )
    assert read_learned(tmp_path) == {}


def test_only_the_latest_spec_hashes_are_kept(tmp_path):
    hashes = {f"h{i}": MemoryFigures(peak_mb=i) for i in range(10)}
    write_learned(tmp_path, {"m": hashes})
    assert list(read_learned(tmp_path)["m"]) == ["h6", "h7", "h8", "h9"]

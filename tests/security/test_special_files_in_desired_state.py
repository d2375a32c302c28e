"""Issue 14, case 4: desired-state is read as regular files only, of at most 1 MiB each.

First release: a `*.yaml` symlink to /dev/zero ended in a MemoryError at 2.7 GB; a FIFO named
`*.yaml` hung `validate` (and froze the live loop for over a minute); a 20 MB spec was accepted
and took 11-14 s per validation. Now each is an error naming the file, reported at once, and
the rest of the directory is still read. A symlink to a regular file inside the directory stays
fine. The same reader serves `validate`, the git hooks and the loop.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from cli_support import run_cli

PROMPT_S = 10.0  # far below the first release's minutes; a hang is killed by run_cli at 120 s


def validate(desired: Path) -> tuple[int, str, float]:
    began = time.monotonic()
    proc = run_cli("validate", "desired-state", "--no-path-check", cwd=desired.parent)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - began


def error_lines(output: str, name: str) -> list[str]:
    return [x for x in output.splitlines() if f"models/{name}:" in x and ": error:" in x]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_symlink_to_a_device_is_an_error(desired: Path, device: str) -> None:
    os.symlink(device, desired / "models" / "dev.yaml")
    code, output, seconds = validate(desired)
    assert code == 1, output
    assert error_lines(output, "dev.yaml"), output
    assert seconds < PROMPT_S
    assert "models/good.yaml" not in output  # the rest was read, and is fine


def test_a_fifo_does_not_block(desired: Path) -> None:
    os.mkfifo(desired / "models" / "pipe.yaml")
    code, output, seconds = validate(desired)
    assert code == 1, output
    assert error_lines(output, "pipe.yaml"), output
    assert seconds < PROMPT_S


def test_a_20_mb_spec_is_refused_at_once(desired: Path) -> None:
    big = "id: big\nframework: llama_cpp\nmodel_path: /m.gguf\nname: " + "x" * (20 << 20) + "\n"
    (desired / "models" / "big.yaml").write_text(big)
    code, output, seconds = validate(desired)
    assert code == 1, output
    [line] = error_lines(output, "big.yaml")
    assert "MiB" in line or "bytes" in line, line  # says it is the size
    assert seconds < PROMPT_S


def test_a_spec_just_under_the_limit_is_read(desired: Path) -> None:
    text = "id: big\nframework: llama_cpp\nmodel_path: /m.gguf\n" + "#" * 1_000_000 + "\n"
    (desired / "models" / "big.yaml").write_text(text)
    code, output, _ = validate(desired)
    assert code == 0, output


def test_a_symlink_outside_the_directory_is_an_error(desired: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("id: elsewhere\nframework: llama_cpp\nmodel_path: /m.gguf\n")
    os.symlink(outside, desired / "models" / "elsewhere.yaml")
    code, output, _ = validate(desired)
    assert code == 1, output
    assert error_lines(output, "elsewhere.yaml"), output


def test_a_symlink_to_a_regular_file_inside_is_fine(desired: Path) -> None:
    (desired / "models" / "shared").mkdir()
    (desired / "models" / "shared" / "alias.txt").write_text(
        "id: alias\nframework: llama_cpp\nmodel_path: /m.gguf\n"
    )
    os.symlink("shared/alias.txt", desired / "models" / "alias.yaml")
    code, output, _ = validate(desired)
    assert code == 0, output

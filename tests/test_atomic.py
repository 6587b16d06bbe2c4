"""Atomic writes (`crl.sim.atomic`), which every stage's outputs go through: a reader sees the
old file or the new one, never half of one, and a failed write leaves nothing behind."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from crl.sim.atomic import temporary_path, write_atomic, write_json


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("previous")

    def half(tmp: Path) -> None:
        tmp.write_text("{\"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, half)
    assert target.read_text() == "previous" and list(tmp_path.iterdir()) == [target]
    with pytest.raises(TypeError):  # not JSON: refused before anything is written
        write_json(target, {"x": object()})
    assert target.read_text() == "previous" and list(tmp_path.iterdir()) == [target]


def test_a_write_replaces_the_file_readable_by_all(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "result.json"
    write_json(target, {"b": 1, "a": [1.5]}, sort_keys=True)
    assert target.read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
    write_json(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2}
    # mkstemp makes files only their owner can read; a result or a policy is for everyone
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_temporary_files_are_hidden_unique_and_keep_the_suffix(tmp_path: Path) -> None:
    """Writers that pick a format by suffix (imageio, ffmpeg) get the target's; two writers of
    one target never share a temporary file."""
    target = tmp_path / "episodes.mp4"
    with temporary_path(target) as a, temporary_path(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        assert a.name.startswith(".episodes.mp4.") and a.suffix == ".mp4"
    assert list(tmp_path.iterdir()) == []

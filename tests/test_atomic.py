"""Atomic writes (`crl.core.atomic`), which every stage's outputs go through: a reader sees the
old file or the new one, never half of one, and a failed write leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from crl.core.atomic import temporary_path, write_atomic, write_json


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


def test_the_data_reaches_the_disk_before_the_rename_and_the_rename_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power cut after a write leaves the old file or the new one, whole: the temporary file
    is fsynced before it is renamed over the target, and the folder after the rename."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", str(src)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    target = tmp_path / "result.json"
    write_json(target, {"a": 1})
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"], events
    (_, synced_file), (_, renamed), (_, synced_dir) = events
    assert synced_file == renamed and Path(renamed).parent == tmp_path
    assert synced_dir == str(tmp_path)
    assert json.loads(target.read_text()) == {"a": 1}


ROOT = Path(__file__).resolve().parent.parent
# Everything that writes files: the package's stages, the benches, the ROS package.
WRITERS = ("sim", "train", "export", "runtime", "bench", "ros2_ws/src/crl_runtime/crl_runtime")
# A file written in place (or renamed without fsync): `x.write_text(`, `x.write_bytes(`,
# `json.dump(`, `os.replace(`, `x.rename(`. Only a temporary path from `temporary_path` may be
# written directly; it then goes into place through `replace_durably`.
IN_PLACE = re.compile(r"([\w.\[\]]+)\.write_(?:text|bytes)\(|json\.dump\(|os\.replace\(|"
                      r"\.rename\(")
TEMPORARY = {"tmp", "tmps[path]"}


def test_every_file_a_command_or_bench_writes_goes_through_atomic() -> None:
    """JSON results, policies, engines: none is written in place, where a crash or a full disk
    would leave half a file."""
    found = []
    for folder in WRITERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "sim" / "atomic.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                for m in IN_PLACE.finditer(line):
                    if m[1] not in TEMPORARY:
                        found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "written in place, not through crl.core.atomic:\n" + "\n".join(found)

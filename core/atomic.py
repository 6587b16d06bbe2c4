"""Files written whole or not at all: every stage's outputs (videos, ONNX files, engines and
their sidecars, JSON results) go to a temporary file beside the target and are renamed over it,
so a reader never sees half a file and a failed write leaves the previous one as it was. The
file's data is flushed to disk before the rename and the folder's entry after it, so a power cut
or a crash of the machine leaves the old file or the new one, never an empty or torn one.

Pure Python (the standard library alone), so the runtime uses it on a robot without jax.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def temporary_path(path: Path) -> Iterator[Path]:
    """A new, uniquely named temporary file in `path`'s folder (created with its parents): the
    same filesystem, so renaming it over `path` is atomic, and the same suffix, for writers that
    pick a format from it (imageio, ffmpeg). Removed on exit unless it was renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        tmp.chmod(0o644)  # mkstemp's 0600 would make the renamed file private to its writer
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Flush a file's data (or a folder's entries) to the disk: without it a rename can reach the
    disk before the data it names, and a power cut leaves an empty file under the new name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename the fully written `tmp` over `path`, its data on disk before the rename and the
    rename itself on disk after it (the folder's fsync)."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes the whole file to a temporary path, which then replaces `path`."""
    with temporary_path(path) as tmp:
        write(tmp)
        replace_durably(tmp, path)


def write_json(path: Path, data: Any, sort_keys: bool = False) -> None:
    """`data` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))

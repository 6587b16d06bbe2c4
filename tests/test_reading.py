"""crl.core.reading: a file a user names is read only if it is a regular file within a limit,
and nothing about the name can make the read block or grow without bound."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from crl.core.reading import RefusedFileError, read_limited


def test_a_regular_file_up_to_the_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(3 * 2**20 + 5)  # over one read's chunk
    path.write_bytes(data)
    assert read_limited(path, len(data)) == data
    with pytest.raises(RefusedFileError, match=f"{len(data):,} bytes, over the "
                                                f"{len(data) - 1:,}-byte limit"):
        read_limited(path, len(data) - 1)


@pytest.mark.parametrize(("make", "kind"), [
    (lambda d: (os.mkfifo(d / "fifo"), d / "fifo")[1], "a FIFO"),
    (lambda d: Path("/dev/zero"), "a character device"),
    (lambda d: d, "a folder"),
])
def test_what_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, make, kind: str) -> None:
    started = time.monotonic()
    with pytest.raises(RefusedFileError, match=f"^{kind}, not a regular file$"):
        read_limited(make(tmp_path), 2**20)
    assert time.monotonic() - started < 1.0


def test_a_missing_file_is_the_callers_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_limited(tmp_path / "none", 10)

"""Reading a file a user names (a policy, an engine, a robot config) without trusting the name.

A path can name a FIFO, whose open blocks until some writer comes, a character device such as
/dev/zero, which never ends, or a file far larger than any the project writes: read whole, the
first hangs the process and the others fill the memory until the kernel kills something, on a
robot perhaps its driver. `read_limited` opens without blocking, reads only regular files and
at most a limit, and says which rule a path broke.

Pure Python (the standard library alone), so the runtime uses it on a robot without jax.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class RefusedFileError(Exception):
    """A file that exists but is not read: its message is the reason, without the path."""


def read_limited(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The contents of the regular file `path`, at most `max_bytes` long.

    `OSError` (a missing file, no permission) passes through for the caller to word; anything
    that is not a regular file, or a file over the limit (checked before reading, and again
    while reading, should the file grow meanwhile), is a `RefusedFileError`.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(Path(path), flags)  # O_NONBLOCK: a FIFO opens at once instead of waiting
    try:
        mode = os.fstat(fd)
        if not stat.S_ISREG(mode.st_mode):
            raise RefusedFileError(f"{_kind(mode.st_mode)}, not a regular file")
        if mode.st_size > max_bytes:
            raise RefusedFileError(f"{mode.st_size:,} bytes, over the {max_bytes:,}-byte limit")
        chunks, size = [], 0
        while size <= max_bytes and (chunk := os.read(fd, min(1 << 24, max_bytes + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise RefusedFileError(f"grew over the {max_bytes:,}-byte limit while it was read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"

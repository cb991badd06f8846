"""Read a whole local file that can neither hang the job nor exhaust its memory.

`/dev/zero` never ends, a FIFO blocks until someone writes to it, and a 40 GB export would be read
whole before any check ran. So only regular files are read, and their size is checked before
reading (and enforced while reading, in case the file grows).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class FileRefused(Exception):
    """The path is not a regular file, or it is larger than allowed; the message says which."""


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `max_bytes`.

    Raises FileRefused for anything else and OSError when the file cannot be opened or read.
    """
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, before fstat could refuse it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{path} is {_kind(info.st_mode)}: expected a regular file")
        if info.st_size > max_bytes:
            raise FileRefused(f"{path} is {info.st_size} bytes; the limit is {max_bytes}")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileRefused(f"{path} grew past the limit of {max_bytes} bytes while being read")
    return data

"""Opening a file that must be a regular file: never blocking on a FIFO (or reading a
device without end) someone put where a shard file or a failure marker belongs."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


def open_regular(path: Path, *, follow: bool = True) -> BinaryIO:
    """`path` opened for reading if it is a regular file (`follow`: through a symbolic
    link); OSError otherwise (FileNotFoundError when there is none)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")

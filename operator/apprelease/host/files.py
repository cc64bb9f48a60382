"""Small filesystem helpers shared by the release store and the proxy backend."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable (a crash cannot undo it)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """Flush the file system holding `path`, not every file system of the host as os.sync() does.

    Linux's syncfs(2) (Python has no wrapper): a build's files reach the disk in one call
    instead of one fsync per file, and a busy neighbour on another disk does not slow it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)

"""An exclusive lock between processes on one machine, released when its holder ends however it ends."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def held(lock_file: Path, waiting: str) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created if missing) for this block, printing ``waiting`` to
    stderr while another process holds it; yields whether the lock is held (False where the system or the file
    system has no ``flock``: then nothing is excluded). The kernel releases the lock when its process ends, so a
    crash or a signal never leaves it behind."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield False
        return
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting, file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without flock (some network mounts)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""Atomic file writes for the generator, on top of `ban.data.atomic` (temporary sibling, then rename)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from ban.data.atomic import atomic_path


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of `path` (parents created) for writing; on success it replaces `path`, on
    error it is removed. Text is UTF-8 with newlines written as given."""
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    with atomic_path(path) as temporary, open(temporary, mode, **text) as handle:
        yield handle


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write `data` (text as UTF-8, newlines as given) to `path` atomically."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)

"""Atomic writes: a file or directory appears under its final name only once it is complete.

Everything is first written under a hidden temporary name in the same directory (same file system), then moved
into place with :func:`os.replace`, so an interrupted run never leaves something that looks finished.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ban.errors import DataError

# the errors of a write that found no room: a full disk, a full quota, a file-size limit (RLIMIT_FSIZE, EFBIG)
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# the name of an atomic temporary (``.NAME.tmp-PID``, :func:`temporary_sibling`)
_TEMPORARY = re.compile(r"\..+\.tmp-\d+")


def unwritable(path: str | os.PathLike[str], error: OSError) -> DataError:
    """The error for ``path``, which a write could not finish (``error``: no room, :data:`NO_ROOM`; no
    permission…)."""
    return DataError(f"cannot be written: {error.strerror or error}", path=path)


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A hidden, process-unique name next to ``path`` (same directory, so a rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path``; on error it is removed.

    Works for a file or a directory; missing parent directories are created. An existing directory at
    ``path`` is replaced only by a directory, and only after the new one is complete; a file is never put
    where a directory is, nor a directory where a file is (:class:`DataError`, nothing touched). A directory
    that cannot be moved aside — the working directory or one holding it, a mount point — is refused first.

    A write that finds no room (a full disk or quota, a file-size limit: :data:`NO_ROOM`) becomes a
    :class:`DataError` naming ``path`` ("cannot be written: No space left on device"), the earlier ``path``
    kept. Where ``path`` lies inside another atomic write's temporary (this process's or a parent's: the
    worker of a pool), the :class:`OSError` goes on as it is, and the outermost write names its own ``path``:
    the file or directory the user asked for, not a hidden temporary.
    """
    path = Path(path)
    temp = temporary_sibling(path)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        if path.is_dir() and not path.is_symlink():
            _check_movable(path)
        make_directory(path.parent)
        _remove(temp)
        _remove_stale_siblings(path)
        yield temp
        _check_same_kind(temp, path)
        if path.is_dir() and not path.is_symlink():
            os.replace(path, old)
            os.replace(temp, path)
            _remove(old)
        else:
            os.replace(temp, path)
    except BaseException as error:
        _restore(old, path)  # interrupted between the two renames: the previous directory goes back
        _remove(temp)
        if isinstance(error, OSError) and error.errno in NO_ROOM and not _inside_temporary(path):
            raise unwritable(path, error) from error
        raise


def _inside_temporary(path: Path) -> bool:
    """Whether one of ``path``'s parents is an atomic write's temporary (``.NAME.tmp-PID``)."""
    return any(_TEMPORARY.fullmatch(parent.name) for parent in path.parents)


def make_directory(path: str | os.PathLike[str]) -> Path:
    """Create the directory ``path`` and its missing parents (as ``mkdir -p``); :class:`DataError` naming the
    culprit where ``path`` or one of its parents exists and is not a directory. Returns ``path``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError("exists and is not a directory", path=first_non_directory(path) or path) from None
    return path


def check_file_target(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, a file ``path`` that cannot be written: a directory is there (writing would
    lose it), or one of its parents is not a directory."""
    path = Path(path)
    if path.is_dir():
        raise DataError("is a directory: give the name of the file to write", path=path)
    culprit = first_non_directory(path.parent)
    if culprit is not None:
        raise DataError("exists and is not a directory", path=culprit)


def _check_movable(directory: Path) -> None:
    """:class:`DataError` for a ``directory`` that a rename cannot replace whole: this process's working directory
    or one holding it (the shell would be left in a deleted directory), or a mount point."""
    real, here = directory.resolve(), Path.cwd().resolve()
    if real == here or real in here.parents:
        raise DataError("is the working directory or holds it, and is replaced whole by a directory built beside "
                        "it: run from elsewhere or name a directory inside it", path=directory)
    if os.path.ismount(real):
        raise DataError("is a mount point, which cannot be replaced whole by a directory built beside it: name a "
                        "directory inside it", path=directory)


def first_non_directory(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that exists (or is a dangling link) and is not a directory."""
    return next((part for part in reversed((path, *path.parents))
                 if (part.exists() or part.is_symlink()) and not part.is_dir()), None)


def _check_same_kind(temp: Path, path: Path) -> None:
    """The new ``temp`` may replace what is at ``path`` only if both are files or both are directories."""
    if not temp.is_dir():
        check_file_target(path)
    elif path.exists() and not path.is_dir():
        raise DataError("exists and is not a directory", path=path)


def _remove_stale_siblings(path: Path) -> None:
    """Remove the temporaries (``.NAME.tmp-PID``, ``.NAME.old-PID``) that killed processes left next to
    ``path``; those of processes still running are kept. A process killed between moving the previous
    directory aside and moving the new one in left no ``path``: its ``.old-PID`` is moved back instead."""
    for sibling in path.parent.iterdir():
        kind, _, pid = sibling.name.removeprefix(f".{path.name}.").rpartition("-")
        if sibling.name.startswith(f".{path.name}.") and kind in ("tmp", "old") and pid.isdigit() \
                and not _running(int(pid)):
            if kind == "old":
                _restore(sibling, path)
            _remove(sibling)


def _restore(old: Path, path: Path) -> None:
    """Move the previous directory ``old`` back to ``path`` where nothing is at ``path``."""
    if (old.exists() or old.is_symlink()) and not (path.exists() or path.is_symlink()):
        os.replace(old, path)


def _running(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` (parents created) for writing; on success it replaces ``path``, on
    error it is removed. Text is UTF-8 with newlines written as given."""
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    with atomic_path(path) as temporary, open(temporary, mode, **text) as handle:
        yield handle


def write_file(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, newlines as given) to ``path`` atomically."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON atomically."""
    write_file(path, json.dumps(data, ensure_ascii=False))


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], object]) -> None:
    """Call ``writer(temp_path)`` and move the result to ``path`` atomically, with the permissions a newly
    created file gets here (safetensors' writer, for one, makes its files private to the owner)."""
    with atomic_path(path) as temp:
        writer(temp)
        if temp.is_file():
            temp.chmod(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)  # reading the process umask means setting it: put it straight back
    os.umask(mask)
    return mask

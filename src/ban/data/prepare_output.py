"""The ``--out`` of ``ban prepare``: a directory the command replaces as a whole.

A prepared dataset is built in a hidden sibling of ``--out`` and swapped in once complete
(:func:`ban.data.atomic.atomic_path`), so a failed or killed run leaves the previous dataset whole. What the
swap removes must therefore be nothing but an earlier dataset of the same kind: :func:`checked_output`
refuses, before anything is read or written, an ``--out`` that holds anything else and any input that lies
inside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ban.data.atomic import first_non_directory
from ban.data.jsonfile import read_json_object
from ban.data.prepared import MANIFEST
from ban.data.textfile import resolve_path
from ban.errors import DataError


def checked_output(
    out: str | os.PathLike[str], task: str, inputs: Mapping[str, Iterable[str | os.PathLike[str] | None]]
) -> Path:
    """Check that ``out`` may be replaced by a prepared dataset of ``task`` (the manifest's ``"task"``) and that
    none of ``inputs`` (option name without ``--`` → the paths it gives; ``None`` entries are skipped) lies
    inside it. Returns the directory to build: ``out`` with symlinks resolved, so a linked ``--out`` keeps its
    link."""
    real = resolve_path(Path(out), "out")
    for option, paths in inputs.items():
        for path in paths:
            if path is not None:
                _check_outside(Path(path), real, option)
    _check_replaceable(Path(out), task)
    return real


def _check_replaceable(out: Path, task: str) -> None:
    """``out`` is missing (and can be made: no parent of it is a file), an empty directory, or a prepared dataset
    of ``task``."""
    if not out.exists():
        culprit = first_non_directory(out.parent)
        if culprit is not None:
            raise DataError(f"exists and is not a directory, and --out {out} lies under it", path=culprit)
        return
    if not out.is_dir():
        raise DataError("--out exists and is not a directory", path=out)
    if any(out.iterdir()) and _manifest_task(out) != task:
        raise DataError(f"--out is not empty and is not a prepared {task} dataset (no {MANIFEST} with \"task\": "
                        f"\"{task}\"); it is replaced as a whole: choose a new or empty directory", path=out)


def _manifest_task(data_dir: Path) -> object:
    """The ``"task"`` of ``data_dir``'s manifest, or None where there is no readable manifest (one of another
    format version still says what the directory is: preparing it again is what its error advises)."""
    try:
        return read_json_object(data_dir / MANIFEST).get("task")
    except DataError:
        return None


def _check_outside(path: Path, out: Path, option: str) -> None:
    """An input inside ``out`` (resolved) would vanish when ``out`` is replaced."""
    resolved = resolve_path(path, option)
    if resolved == out or out in resolved.parents:
        raise DataError("lies inside --out, which is replaced as a whole: move it or choose another --out",
                        path=path, field=option)


"""Reading a ``.npy`` file or a split's ``.npz`` archive of a prepared dataset with errors that name it and the
array; writing either atomically; the offsets that index variable-length lists in a split."""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from ban.data.atomic import write_with
from ban.errors import DataError

# what np.load raises for a damaged .npy / .npz: a bad header or truncated data (ValueError, EOFError, OSError), a
# damaged archive (BadZipFile; RuntimeError for an "encrypted" member, NotImplementedError for an unknown
# compression, zlib.error for garbled deflated bytes), a header declaring more than memory holds (MemoryError)
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error,
              MemoryError)


def read_npy(path: str | os.PathLike[str], *, mmap: bool = False, missing: str = "file not found",
             advice: str = "") -> np.ndarray:
    """The array in ``path`` (memory-mapped read-only if ``mmap``; pickled objects are never loaded); a
    :class:`DataError` naming the file when it is missing (``missing``), not a complete ``.npy`` file, or an
    archive of several (``.npz``) instead. ``advice`` ends the message (e.g. how to make the file again)."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(missing, path=path) from None
    except NPZ_ERRORS as error:
        raise DataError(f"not a readable .npy file ({error}){advice}", path=path) from None
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        array.close()
        raise DataError(f"an .npz archive, not a .npy file{advice}", path=path)
    return array


def read_split_npz(path: str | os.PathLike[str], spec: Mapping[str, tuple[str, int]]) -> dict[str, np.ndarray]:
    """The arrays of a prepared split's ``.npz`` that ``spec`` names (name → (dtype kinds as ``np.dtype.kind``
    letters, number of dimensions)), each checked; pickled objects are never loaded. A :class:`DataError` names the
    file, and the array that is missing or of another kind or dimension; one row per sample is the caller's
    check."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in spec if name in npz.files}
    except FileNotFoundError:
        raise DataError("split file missing: rerun `ban prepare`", path=path) from None
    except NPZ_ERRORS as error:
        raise DataError(f"not a valid prepared split ({error})", path=path) from None
    for name, (kinds, ndim) in spec.items():
        array = arrays.get(name)
        if array is None or array.dtype.kind not in kinds or array.ndim != ndim:
            found = "nothing" if array is None else f"{array.dtype} array of {array.ndim} dimensions"
            raise DataError(f"expected a {ndim}-d array of kind {kinds!r}, got {found}", path=path, field=name)
    return arrays


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file at ``path`` atomically (temp file in the same directory, then rename)."""
    def save(temporary: os.PathLike[str]) -> None:
        with open(temporary, "wb") as file:  # a handle: np.save adds no ".npy" to the temporary's name
            np.save(file, array)

    write_with(path, save)


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` archive at ``path`` atomically, like :func:`write_npy`."""
    def save(temporary: os.PathLike[str]) -> None:
        with open(temporary, "wb") as file:
            np.savez(file, **arrays)

    write_with(path, save)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """The offsets [n + 1] (int64) of n lists of these ``lengths`` [n] laid end to end: list i is
    ``values[offsets[i]:offsets[i + 1]]``."""
    return np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths, dtype=np.int64)])


def offsets_fit(offsets: np.ndarray, lists: int, values: int) -> bool:
    """Whether ``offsets`` index ``lists`` lists laid end to end in ``values`` values: ``lists + 1`` of them,
    starting at 0, never decreasing, ending at ``values``."""
    return (len(offsets) == lists + 1 and offsets[0] == 0 and offsets[-1] == values
            and not (offsets[1:] < offsets[:-1]).any())

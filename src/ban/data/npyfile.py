"""Reading a ``.npy`` file of a prepared dataset with errors that name it; writing one atomically."""

from __future__ import annotations

import os
import zipfile
import zlib

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


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file at ``path`` atomically (temp file in the same directory, then rename)."""
    def save(temporary: os.PathLike[str]) -> None:
        with open(temporary, "wb") as file:  # a handle: np.save adds no ".npy" to the temporary's name
            np.save(file, array)

    write_with(path, save)

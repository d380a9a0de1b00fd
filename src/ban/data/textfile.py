"""Input files: their real path, their bytes or their UTF-8 text, with errors that name them; compressed files
refused by name."""

from __future__ import annotations

import os
from pathlib import Path

from ban.errors import DataError


def resolve_path(path: str | os.PathLike[str], field: str | None = None) -> Path:
    """``path`` with its symlinks resolved; :class:`DataError` naming it (and ``field``) for a symlink loop."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as error:  # Python 3.11 raises RuntimeError for a loop, 3.13 OSError
        raise DataError(f"cannot resolve ({error})", path=path, field=field) from None


def read_bytes(path: str | os.PathLike[str], *, missing: str = "file not found") -> bytes:
    """The bytes of ``path``; a :class:`DataError` naming it: ``missing`` when it does not exist (say there how to
    make it), or why it cannot be read (a directory, a symlink loop, an I/O error)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(missing, path=path) from None
    except OSError as error:
        raise DataError(f"cannot read ({error.strerror or error})", path=path) from None


def read_text(path: str | os.PathLike[str], *, missing: str = "file not found") -> str:
    """The UTF-8 text of ``path`` without a leading byte-order mark (as Windows editors write one) and with its
    line ends made ``\\n`` (as Python's text mode reads them); errors as :func:`read_bytes`, and a
    :class:`DataError` for bytes that are not UTF-8."""
    data = read_bytes(path, missing=missing)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text ({error})", path=path) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def refuse_compressed(start: bytes, path: str | os.PathLike[str], contents: str) -> None:
    """:class:`DataError` if a file of text, ``start`` its first 4 bytes, starts with gzip's or zip's magic bytes
    (``contents``: what to extract from the archive)."""
    if start[:2] == b"\x1f\x8b":
        raise DataError("a gzip-compressed file: decompress it first (gunzip)", path=path)
    if start[:4] == b"PK\x03\x04":
        raise DataError(f"a zip archive: extract its {contents} first (unzip)", path=path)

"""Streaming reader of bottom-up-attention TSV feature files.

Each line (the official files end lines with ``\\r\\n``) holds six tab-separated fields: ``image_id``,
``image_w``, ``image_h``, ``num_boxes``, ``boxes`` and ``features``; the last two are base64 of float32
arrays ``[num_boxes, 4]`` (pixel x1, y1, x2, y2) and ``[num_boxes, D]`` (D = 2048 for the official files).
Lines are read one at a time, so memory stays at one record however large the file is. Every value is
checked as it is read (:func:`ban.data.features.check_values`, :func:`ban.data.features.check_box_corners`):
this is where the values of our store are checked, once, when it is written.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from ban.data.features import FeatureRecord, check_box_corners, check_values
from ban.data.textfile import refuse_compressed
from ban.errors import DataError

_READ_BUFFER = 1 << 22  # lines are ~0.2–1 MB; a large buffer makes reading them cheap

if sys.version_info >= (3, 11):
    def _decode_base64(text: bytes) -> bytes:
        """Strict base64 decoding (checked in C: alphabet, padding, nothing after the padding)."""
        return binascii.a2b_base64(text, strict_mode=True)
else:  # pragma: no cover - Python 3.10
    def _decode_base64(text: bytes) -> bytes:
        return base64.b64decode(text, validate=True)

TSV_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")


def iter_tsv_records(
    path: str | os.PathLike[str],
    *,
    feature_dim: int | None = None,
    on_progress: Callable[[int], object] | None = None,
) -> Iterator[FeatureRecord]:
    """Yield the records of one TSV file in file order.

    ``feature_dim`` (if given) is enforced; otherwise the first record's width is, for the rest of the file.
    ``on_progress(nbytes)`` is called with the size of each line read. Raises :class:`DataError` naming the
    file, the line and the field for a wrong field count, a bad integer or one beyond 64 bits, bad base64, a NaN,
    infinite or absurdly large value (beyond ±:data:`ban.data.features.VALUE_LIMIT`), a box with x2 < x1 or
    y2 < y1, arrays whose sizes do not match ``num_boxes``, or features of another width than the one enforced
    (saying where that width came from).
    """
    yield from _iter_records([path], feature_dim, on_progress)


def _iter_records(
    paths: Sequence[str | os.PathLike[str]], feature_dim: int | None, on_progress: Callable[[int], object] | None
) -> Iterator[FeatureRecord]:
    """The records of ``paths`` in turn, as :func:`iter_tsv_records` reads them, the first record's width enforced
    on all of them unless ``feature_dim`` is given."""
    expected = None if feature_dim is None else _Width(feature_dim, _GIVEN)
    for path in map(Path, paths):
        with _open_tsv(path) as file:
            for line_number, line in enumerate(file, start=1):
                if on_progress is not None:
                    on_progress(len(line))
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                record = _parse_line(line, path, line_number, expected)
                expected = expected or _Width(record.features.shape[1], "the width of the first record "
                                              f"({path}: line {line_number}, image_id={record.image_id})")
                yield record


@dataclass(frozen=True)
class _Width:
    """The feature width every record must have, and where it came from (said when a record's is another)."""

    dim: int
    source: str


_GIVEN = "the width given (--feature-dim, or that of the other feature sources)"


def iter_tsv_image_ids(
    path: str | os.PathLike[str], *, jump: bool = True, on_progress: Callable[[int], object] | None = None
) -> Iterator[tuple[int, int]]:
    """``(line number, image_id)`` of each record of one TSV file, with nothing decoded, so that what the features
    must cover can be checked before converting them.

    The first record is read in full. Its feature width and line end give every later line's length from that
    line's ``num_boxes`` (the two base64 fields' lengths follow from them), so the pass jumps from line start to
    line start with one read of a few KB per line (the next line's start, with the line end before it), and
    checks each jump: the tab after the boxes, and that line end. A line where a check fails is read in full,
    so a file that does not keep to the first record's layout is read right, only slower — except where a wrong
    jump lands exactly on a later line end (records of other widths): ``jump=False`` reads every line, exactly.
    ``on_progress(nbytes)`` is called with the size of each line passed. The image id, and the number of fields
    of each line read in full, are checked as :func:`iter_tsv_records` checks them.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb", buffering=0) as file:
        refuse_compressed(file.read(4), path, "TSV files")
        if jump and hasattr(os, "posix_fadvise"):  # no read-ahead: each read is a few KB far from the last
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        layout: _Layout | None = None
        position = line_number = 0
        probe = b""  # the start of the line at ``position``, when the previous jump read it
        while position < size:
            line_number += 1
            landing = None
            if layout is not None:
                landing = _jump(file.fileno(), position, probe or os.pread(file.fileno(), _PROBE_BYTES, position),
                                layout, size)
            where = f"line {line_number}"
            if landing is None:
                line = _read_line(file.fileno(), position)
                record, end, probe = line.rstrip(b"\r\n"), position + len(line), b""
                if record:
                    _check_field_count(record.count(b"\t") + 1, path, where)
                if layout is not None and not line.endswith(b"\n"):  # the last line, without a line end
                    _check_not_cut_short(line, layout, path, where)
                first_field = record.split(b"\t", 1)[0]
                layout = layout or (_layout(line) if jump else None)
            else:
                first_field, end, probe = landing
            if on_progress is not None:
                on_progress(end - position)
            if first_field:  # not a blank line
                yield line_number, _integer(first_field, path, where, "image_id")
            position = end


@dataclass(frozen=True)
class _Layout:
    """What the first record says of every line: its line end and feature width."""

    line_end: bytes
    feature_dim: int


_PROBE_BYTES = 4096  # read at a line start: the four integer fields, boxes (≤ ~190) and the tab after them
_LINE_CHUNK = 1 << 16  # a line read in full is read in chunks of this size, read-ahead on


def _base64_length(num_bytes: int) -> int:
    return 4 * ((num_bytes + 2) // 3)


def _layout(line: bytes) -> _Layout | None:
    """The layout of a full record line (None if it is not a well-formed record with a line end)."""
    record = line.rstrip(b"\r\n")
    fields = record.split(b"\t")
    if len(fields) != len(TSV_FIELDS) or len(record) == len(line) or not fields[3].isdigit():
        return None
    num_boxes = int(fields[3])
    feature_bytes = len(fields[5]) // 4 * 3 - fields[5][-2:].count(b"=")
    if (num_boxes == 0 or len(fields[4]) != _base64_length(16 * num_boxes) or feature_bytes % (4 * num_boxes)
            or len(fields[5]) != _base64_length(feature_bytes)):
        return None
    return _Layout(line[len(record):], feature_bytes // (4 * num_boxes))


def _record_length(head: bytes, layout: _Layout) -> tuple[bytes, int] | None:
    """``(image_id field, length without the line end)`` of the record ``head`` begins, from its num_boxes and
    ``layout``; None unless ``head`` begins a record (digits where the integers go, a tab after the boxes)."""
    fields = head.split(b"\t", 4)
    if len(fields) < 5 or not fields[0].lstrip(b"-").isdigit() or not fields[3].isdigit() or int(fields[3]) == 0:
        return None  # not a record's start (a blank line, a damaged field)
    num_boxes = int(fields[3])
    boxes_end = sum(len(field) + 1 for field in fields[:4]) + _base64_length(16 * num_boxes)
    if head[boxes_end:boxes_end + 1] != b"\t":
        return None
    return fields[0], boxes_end + 1 + _base64_length(4 * num_boxes * layout.feature_dim)


def _jump(descriptor: int, position: int, probe: bytes, layout: _Layout, size: int) -> tuple[bytes, int, bytes] | None:
    """``(image_id field, end, the next line's probe)`` of the line starting at ``position`` (``probe``: its first
    bytes), its end computed by :func:`_record_length` and checked (the line end before ``end``); None where a
    check fails (the line is then read in full)."""
    record = _record_length(probe, layout)
    if record is None:
        return None
    end = position + record[1] + len(layout.line_end)
    after = os.pread(descriptor, len(layout.line_end) + _PROBE_BYTES, end - len(layout.line_end))
    if end > size or not after.startswith(layout.line_end):
        return None
    return record[0], end, after[len(layout.line_end):]


def _check_not_cut_short(line: bytes, layout: _Layout, path: Path, where: str) -> None:
    """:class:`DataError` if the file's last line is shorter than its record must be: a download cut short shows
    here, before the conversion of everything before it."""
    record = _record_length(line, layout)
    if record is not None and record[1] > len(line):
        raise DataError(f"the last record holds {len(line)} bytes where its num_boxes and the first record's feature "
                        f"width give {record[1]}: is the file cut short (an interrupted download)?", path=path,
                        record=where)


def _read_line(descriptor: int, position: int) -> bytes:
    """The line starting at ``position`` with its line end (a last line without one: to the end of the file)."""
    parts = []
    while chunk := os.pread(descriptor, _LINE_CHUNK, position):
        cut = chunk.find(b"\n")
        if cut >= 0:
            parts.append(chunk[:cut + 1])
            break
        parts.append(chunk)
        position += len(chunk)
    return b"".join(parts)


def _open_tsv(path: Path) -> BinaryIO:
    """The file opened for reading, with a large buffer; :class:`DataError` for a compressed file."""
    file = open(path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115 - returned to the caller's with block
    try:
        refuse_compressed(file.peek(4), path, "TSV files")
    except DataError:
        file.close()
        raise
    return file


def iter_tsv_files(
    paths: Sequence[str | os.PathLike[str]], *, feature_dim: int | None = None, progress: bool = True
) -> Iterator[FeatureRecord]:
    """Records of several TSV files in turn, with one progress bar over their total size (bytes). The first
    record's width is enforced on all files unless ``feature_dim`` is given."""
    total = sum(Path(path).stat().st_size for path in paths)
    with tqdm(total=total, desc="converting TSV", unit="B", unit_scale=True, disable=not progress) as bar:
        yield from _iter_records(paths, feature_dim, bar.update)


def _parse_line(line: bytes, path: Path, line_number: int, expected: _Width | None) -> FeatureRecord:
    fields = line.split(b"\t")
    where = f"line {line_number}"
    _check_field_count(len(fields), path, where)
    image_id, num_boxes = (_integer(fields[i], path, where, TSV_FIELDS[i]) for i in (0, 3))
    image_w, image_h = (_pixels(fields[i], path, where, TSV_FIELDS[i]) for i in (1, 2))
    where = f"line {line_number} (image_id={image_id})"
    if num_boxes <= 0:
        raise DataError(f"must be positive, got {num_boxes}", path=path, record=where, field="num_boxes")
    for value, name in ((image_w, "image_w"), (image_h, "image_h")):
        if value <= 0:
            raise DataError(f"must be positive, got {value}", path=path, record=where, field=name)
    boxes = _float32_array(fields[4], path, where, "boxes")
    if boxes.size != num_boxes * 4:
        raise DataError(f"holds {boxes.size} floats, expected num_boxes × 4 = {num_boxes * 4}"
                        f"{_float64_hint(boxes.size, num_boxes * 4)}", path=path, record=where, field="boxes")
    check_values(boxes, path=path, record=where, field="boxes")
    boxes = boxes.reshape(num_boxes, 4)
    check_box_corners(boxes, path=path, record=where, field="boxes")
    features = _float32_array(fields[5], path, where, "features")
    if features.size % num_boxes:
        raise DataError(f"holds {features.size} floats, not a multiple of num_boxes = {num_boxes}",
                        path=path, record=where, field="features")
    width = features.size // num_boxes
    if expected is not None and width != expected.dim:
        raise DataError(f"feature width {width} (= {features.size} floats / {num_boxes} boxes), expected "
                        f"{expected.dim}, {expected.source}{_float64_hint(width, expected.dim)}", path=path,
                        record=where, field="features")
    check_values(features, path=path, record=where, field="features")
    return FeatureRecord(image_id, image_w, image_h, boxes, features.reshape(num_boxes, width), path=str(path),
                         line=line_number)


def _check_field_count(count: int, path: Path, where: str) -> None:
    if count != len(TSV_FIELDS):
        raise DataError(f"expected {len(TSV_FIELDS)} tab-separated fields {TSV_FIELDS}, got {count}", path=path,
                        record=where)


def _integer(text: bytes, path: Path, where: str, name: str) -> int:
    """An integer field; it must fit the store's int64."""
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"not an integer: {_shown(text)}", path=path, record=where, field=name) from None
    if not -(2**63) <= value < 2**63:
        raise DataError(f"{_shown(text)} does not fit a 64-bit integer", path=path, record=where, field=name)
    return value


def _pixels(text: bytes, path: Path, where: str, name: str) -> int:
    """An image size in pixels: an integer, or a number with no fraction ("640.0": the reference reads these
    fields as floats, and some extractors write them so)."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"not a number: {_shown(text)}", path=path, record=where, field=name) from None
    if not value.is_integer():
        raise DataError(f"not a whole number of pixels: {_shown(text)}", path=path, record=where, field=name)
    if abs(value) >= 2**63:
        raise DataError(f"{_shown(text)} does not fit a 64-bit integer", path=path, record=where, field=name)
    return int(value)


def _shown(text: bytes) -> str:
    """The start of a field's text, quoted, for a message."""
    return repr(text[:40].decode("ascii", "replace"))


def _float32_array(text: bytes, path: Path, where: str, name: str) -> np.ndarray:
    """The float32 values of a base64 field, flat; their count and values are the caller's to check (the count
    first: float64 values read as float32 are twice as many, and huge)."""
    try:
        raw = _decode_base64(text)
    except (binascii.Error, ValueError) as error:
        raise DataError(f"bad base64 ({error})", path=path, record=where, field=name) from None
    if len(raw) % 4:
        raise DataError(f"{len(raw)} bytes is not a whole number of float32 values", path=path, record=where,
                        field=name)
    return np.frombuffer(raw, dtype=np.float32)


def _float64_hint(count: int, expected: int) -> str:
    """A hint for a field holding twice the float32 values expected: the bytes of float64 values."""
    return "; twice as many: float64 values? the format is float32" if count == 2 * expected else ""

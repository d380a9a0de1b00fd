"""Writing our feature store (layout in docs/data-formats.md) from detector records, in constant memory.

The store is what :class:`ban.data.features.NpyFeatureStore` reads: ``features`` / ``spatial`` / ``boxes``
``.npy`` arrays of all regions, the per-image ``image_ids`` / ``offsets`` / ``image_sizes``, and ``store.json``
written last. ``ban prepare`` converts bottom-up TSV files with it (:mod:`ban.data.feature_setup`), recording
the converted files' stamps so that a rerun over the same files reuses the store.
"""

from __future__ import annotations

import array
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ban.data.atomic import atomic_path, write_json
from ban.data.features import FEATURE_DTYPES, STORE_FORMAT_VERSION, STORE_META, FeatureRecord, spatial_features
from ban.data.jsonfile import read_json
from ban.errors import DataError


class _GrowingNpy:
    """An ``.npy`` file of shape ``[rows, width]`` appended to row by row; its header is fixed up on close.

    NumPy pads ``.npy`` headers so that the first axis can grow in place, which lets the writer stream rows of
    unknown total count in constant memory.
    """

    def __init__(self, path: Path, width: int, dtype: np.dtype) -> None:
        self.path, self.width, self.dtype, self.rows = path, width, np.dtype(dtype), 0
        self.file = open(path, "wb")  # closed in close()
        self.header_size = self._write_header()

    def _write_header(self) -> int:
        self.file.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, self.width)}
        np.lib.format.write_array_header_1_0(self.file, header)
        return self.file.tell()

    def append(self, rows: np.ndarray) -> None:
        """Append ``rows`` ``[n, width]`` (converted to the file's dtype)."""
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        self.file.write(data.data)
        self.rows += data.shape[0]

    def close(self) -> None:
        end = self.file.tell()
        if self._write_header() != self.header_size:
            raise RuntimeError(f"{self.path}: .npy header grew; cannot finish in place")
        self.file.seek(end)
        self.file.flush()
        os.fsync(self.file.fileno())  # on disk before the store is renamed into place
        self.file.close()


@dataclass
class StoreSummary:
    """What :func:`write_feature_store` wrote."""

    num_images: int
    num_boxes: int
    feature_dim: int
    dtype: str


def write_feature_store(
    records: Iterable[FeatureRecord],
    out_dir: str | os.PathLike[str],
    *,
    feature_dim: int | None = None,
    dtype: str = "float32",
    sources: Sequence[dict[str, Any]] = (),
    progress: bool = False,
) -> StoreSummary:
    """Stream ``records`` into a store directory at ``out_dir`` in constant memory.

    Rows are appended to ``.npy`` files on disk as they arrive (only the per-image ids, offsets and sizes —
    a few integers per image — stay in memory). The store is built in a hidden sibling directory and renamed
    to ``out_dir`` once complete; ``store.json`` is written last. ``feature_dim`` (if given) is enforced,
    otherwise taken from the first record. ``sources`` is recorded in ``store.json`` (to recognise a store
    that is already up to date). Raises :class:`DataError` for a wrong width, mismatched arrays or a repeated
    image.
    """
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"dtype must be one of {FEATURE_DTYPES}, not {dtype!r}")
    with atomic_path(out_dir) as temp:
        temp.mkdir(parents=True)
        image_ids, offsets, sizes = array.array("q"), array.array("q", [0]), array.array("q")
        seen: set[int] = set()
        files: dict[str, _GrowingNpy] = {}
        try:
            for record in tqdm(records, desc="features", unit="img", disable=not progress, leave=False):
                _check_record(record, feature_dim)
                if feature_dim is None:
                    feature_dim = int(record.features.shape[1])
                if record.image_id in seen:
                    raise DataError("image appears twice", path=record.path, record=_where(record),
                                    field="image_id")
                seen.add(record.image_id)
                if not files:
                    files = {
                        "features": _GrowingNpy(temp / "features.npy", feature_dim, np.dtype(dtype)),
                        "boxes": _GrowingNpy(temp / "boxes.npy", 4, np.dtype(np.float32)),
                        "spatial": _GrowingNpy(temp / "spatial.npy", 6, np.dtype(np.float32)),
                    }
                files["features"].append(record.features)
                files["boxes"].append(record.boxes)
                files["spatial"].append(spatial_features(record.boxes, record.image_w, record.image_h))
                image_ids.append(record.image_id)
                sizes.extend((record.image_w, record.image_h))
                offsets.append(offsets[-1] + record.num_boxes)
        finally:
            for npy in files.values():
                npy.close()
        if not files:
            raise DataError("no feature records", path=", ".join(str(s.get("path")) for s in sources) or None)
        np.save(temp / "image_ids.npy", np.frombuffer(image_ids, dtype=np.int64))
        np.save(temp / "offsets.npy", np.frombuffer(offsets, dtype=np.int64))
        np.save(temp / "image_sizes.npy", np.frombuffer(sizes, dtype=np.int64).reshape(-1, 2))
        summary = StoreSummary(len(image_ids), int(offsets[-1]), int(feature_dim), dtype)
        meta = {"format_version": STORE_FORMAT_VERSION, "feature_dim": summary.feature_dim,
                "num_images": summary.num_images, "num_boxes": summary.num_boxes, "dtype": dtype,
                "sources": list(sources)}
        write_json(temp / STORE_META, meta)
    return summary


def _where(record: FeatureRecord) -> str:
    where = f"image_id={record.image_id}"
    return where if record.line is None else f"line {record.line} ({where})"


def _check_record(record: FeatureRecord, feature_dim: int | None) -> None:
    """Shapes of one record: boxes ``[n, 4]`` with n ≥ 1, features ``[n, D]`` with ``D == feature_dim`` if
    given."""
    boxes, features = record.boxes, record.features
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"boxes must be [n, 4], got {list(boxes.shape)}", path=record.path,
                        record=_where(record), field="boxes")
    if not boxes.shape[0]:
        raise DataError("no boxes", path=record.path, record=_where(record), field="boxes")
    if features.ndim != 2 or features.shape[0] != boxes.shape[0]:
        raise DataError(f"features {list(features.shape)} do not match {boxes.shape[0]} boxes",
                        path=record.path, record=_where(record), field="features")
    if feature_dim is not None and features.shape[1] != feature_dim:
        raise DataError(f"feature width {features.shape[1]}, expected {feature_dim}", path=record.path,
                        record=_where(record), field="features")
    if record.image_w <= 0 or record.image_h <= 0:
        raise DataError(f"image size {record.image_w}x{record.image_h} is not positive", path=record.path,
                        record=_where(record), field="image_w" if record.image_w <= 0 else "image_h")


def source_stamps(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Identity of input files (absolute path, size, modification time) recorded in ``store.json``."""
    result = []
    for path in paths:
        stat = Path(path).stat()
        result.append({"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return result


def is_complete_store(out_dir: str | os.PathLike[str], sources: Sequence[dict[str, Any]]) -> bool:
    """Whether ``out_dir`` holds a finished store built from exactly ``sources`` (see :func:`source_stamps`),
    so a rerun can skip the conversion."""
    try:
        meta = read_json(Path(out_dir) / STORE_META)
    except DataError:  # missing or damaged: convert again
        return False
    return isinstance(meta, dict) and meta.get("sources") == list(sources)

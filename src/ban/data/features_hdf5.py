"""Direct reading of the authors' HDF5 feature cache, so users who have it skip the TSV conversion.

Layout written by the reference pipeline (one file per split, e.g. ``train36.hdf5`` / ``val.hdf5``, with the
image-id map ``<stem>_imgid2idx.pkl`` next to it):

- adaptive boxes: ``image_features`` ``[R, D]``, ``image_bb`` ``[R, 4]``, ``spatial_features`` ``[R, 6]``
  and ``pos_boxes`` ``[I, 2]`` (rows ``[start, end)`` of each image);
- fixed boxes: ``image_features`` ``[I, n, D]``, ``image_bb`` ``[I, n, 4]``,
  ``spatial_features`` ``[I, n, 6]``.

The map gives each image id its index ``i`` in ``pos_boxes`` (or in the first axis). The layout and the row
ranges are checked when the file is opened; rows are read on demand from datasets opened once per process. A
dataset stored as the reference converter writes it (one contiguous block of a standard float type: h5py without
chunks or compression) is memory-mapped and its rows copied out; any other is read through h5py (the same values,
a few times slower). As the cache is read in place (never converted), the values of an image are checked the
first time it is read, as the TSV reader checks them: finite, within ±:data:`ban.data.features.VALUE_LIMIT`, box
corners with x2 ≥ x1 and y2 ≥ y1. An image whose values passed is not checked again by the same store (each
worker process checks the images it reads); one that failed is checked, and refused, on every read. As ban's own
store, a mapped cache must not be rewritten in place while a process reads it (a read past a truncated end is a
bus error, not an exception); one replaced between runs is refused by name (``features.json``'s identities).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5t

from ban.data.features import FeatureStore, check_box_corners, check_values
from ban.data.pickle_map import read_int_dict
from ban.errors import DataError

_WIDTHS = {"image_bb": 4, "spatial_features": 6}
_READ_ORDER = ("image_features", "spatial_features", "image_bb")  # the order of get()'s arrays and of its checks


def default_image_id_map(path: str | os.PathLike[str]) -> Path:
    """Where the reference pipeline put the image-id map of ``path``: ``<stem>_imgid2idx.pkl`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}_imgid2idx.pkl")


# what h5py raises for a damaged file: a bad superblock or storage (OSError), a datatype it cannot map to numpy
# (ValueError, RuntimeError, TypeError), a damaged object header (KeyError), a shape declaring more than memory
# holds (MemoryError)
H5PY_ERRORS = (OSError, ValueError, RuntimeError, TypeError, KeyError, MemoryError)


class Hdf5FeatureStore(FeatureStore):
    """The authors' HDF5 cache (adaptive or fixed layout) plus its image-id pickle, read lazily."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = self.location = Path(path)
        map_path = default_image_id_map(path)  # a dataset's identity stamps it too (features_listing.source_identity)
        index_of = read_int_dict(map_path)
        try:
            with h5py.File(self.path, "r") as file:
                self._check_layout(file)
                features = file["image_features"]
                self.adaptive = features.ndim == 2
                self.feature_dim = int(features.shape[-1])
                num_rows = int(features.shape[0])
                if self.adaptive:
                    self.pos_boxes = np.asarray(file["pos_boxes"][...], dtype=np.int64)
                    num_images = len(self.pos_boxes)
                else:
                    self.boxes_per_image = int(features.shape[1])
                    num_images = int(features.shape[0])
        except H5PY_ERRORS as error:
            raise DataError(f"cannot read as HDF5 ({error})", path=self.path) from None
        pairs = sorted(index_of.items(), key=lambda item: item[1])
        indices = np.array([index for _, index in pairs], dtype=np.int64)
        in_range = not len(indices) or (indices[0] >= 0 and indices[-1] < num_images)
        if not in_range or len(np.unique(indices)) != len(indices):
            raise DataError(f"image-id map indices must be distinct and in [0, {num_images})", path=map_path)
        self._h5_index = indices
        super().__init__(np.array([image_id for image_id, _ in pairs], dtype=np.int64))
        if self.adaptive:
            self._check_rows(num_rows)
        self._checked = np.zeros(len(self.image_ids), dtype=bool)  # by position: values read and found valid
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset | np.ndarray] = {}
        self._file_pid: int | None = None

    def _check_layout(self, file: h5py.File) -> None:
        """Datasets present with float values (``pos_boxes``: integers), widths and shapes consistent."""
        for name in ("image_features", "image_bb", "spatial_features"):
            dataset = file.get(name)
            if not isinstance(dataset, h5py.Dataset):
                raise DataError("missing or not a dataset (not the reference HDF5 layout)", path=self.path, field=name)
            if dataset.dtype.kind != "f":
                raise DataError(f"values of type {dataset.dtype}, expected floats", path=self.path, field=name)
        features = file["image_features"]
        if features.ndim not in (2, 3):
            raise DataError(f"shape {list(features.shape)}, expected [rows, D] or [images, boxes, D]", path=self.path,
                            field="image_features")
        for name, width in _WIDTHS.items():
            shape = file[name].shape
            if shape != features.shape[:-1] + (width,):
                raise DataError(f"shape {list(shape)} does not fit image_features {list(features.shape)}"
                                f" (expected width {width})", path=self.path, field=name)
        if features.ndim == 2:
            pos_boxes = file.get("pos_boxes")
            if not isinstance(pos_boxes, h5py.Dataset):
                raise DataError("missing or not a dataset (needed with 2-d image_features)", path=self.path,
                                field="pos_boxes")
            if pos_boxes.dtype.kind not in "iu" or pos_boxes.ndim != 2 or pos_boxes.shape[1] != 2:
                raise DataError(f"{pos_boxes.dtype} array of shape {list(pos_boxes.shape)}, expected integer "
                                "[images, 2]", path=self.path, field="pos_boxes")

    def _check_rows(self, num_rows: int) -> None:
        """Every mapped image's ``pos_boxes`` range ``[start, end)`` is non-empty and inside the arrays."""
        ranges = self.pos_boxes[self._h5_index]
        bad = np.flatnonzero((ranges[:, 0] < 0) | (ranges[:, 0] >= ranges[:, 1]) | (ranges[:, 1] > num_rows))
        if len(bad):
            position = int(bad[0])
            raise DataError(f"rows {ranges[position].tolist()} of image {int(self.image_ids[position])} are not a "
                            f"non-empty range inside the {num_rows} rows", path=self.path,
                            record=f"index {int(self._h5_index[position])}", field="pos_boxes")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_datasets"], state["_file_pid"] = None, {}, None
        return state

    def _opened(self) -> dict[str, h5py.Dataset | np.ndarray]:
        """The datasets of :data:`_READ_ORDER` by name (see :meth:`_mapped_or_dataset`), opened once per process:
        handles opened before a fork (another pid) or in the process that pickled the store are not used."""
        if self._file is None or self._file_pid != os.getpid():
            try:
                file = h5py.File(self.path, "r")
                self._datasets = {name: self._mapped_or_dataset(file[name]) for name in _READ_ORDER}
            except H5PY_ERRORS as error:
                raise DataError(f"cannot read as HDF5 ({error})", path=self.path) from None
            self._file, self._file_pid = file, os.getpid()
        return self._datasets

    def _mapped_or_dataset(self, dataset: h5py.Dataset) -> h5py.Dataset | np.ndarray:
        """``dataset`` as a read-only memory map of the file when its values are one contiguous block of a
        standard float type that HDF5 reads to its end, inside the file (reading a row then copies the bytes
        h5py would read); else ``dataset`` itself (chunked, compressed, or damaged: h5py reads it, or says why
        it cannot, on the read of a row)."""
        offset = dataset.id.get_offset()  # None unless contiguous, allocated and in this file; counts the userblock
        if offset is None or not dataset.size or not dataset.id.get_type().equal(h5t.py_create(dataset.dtype)):
            return dataset
        if offset + dataset.size * dataset.dtype.itemsize > self.path.stat().st_size:
            return dataset
        try:
            dataset[(-1,) * dataset.ndim]  # HDF5 refuses a block that runs past the file's recorded end
        except H5PY_ERRORS:
            return dataset
        try:
            return np.memmap(self.path, dtype=dataset.dtype, mode="r", offset=offset, shape=dataset.shape)
        except (OSError, ValueError):  # no address space for the map (a capped or 32-bit process)
            return dataset

    def _row_range(self, position: int) -> tuple[int, int]:
        index = int(self._h5_index[position])
        if self.adaptive:
            return int(self.pos_boxes[index, 0]), int(self.pos_boxes[index, 1])
        return index * self.boxes_per_image, (index + 1) * self.boxes_per_image

    def _read(self, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        check = not self._checked[position]
        features, spatial, boxes = (self._read_dataset(position, name, check) for name in _READ_ORDER)
        self._checked[position] = True
        return features, spatial, boxes

    def _read_boxes(self, position: int) -> np.ndarray:
        # the image is not marked checked: its features are not read
        return self._read_dataset(position, "image_bb", check=not self._checked[position])

    def _read_dataset(self, position: int, name: str, check: bool) -> np.ndarray:
        """The rows ``[n, width]`` float32 of dataset ``name`` for the image at ``position``; if ``check``, their
        values (and for ``image_bb`` the box corners) checked."""
        rows = slice(*self._row_range(position)) if self.adaptive else int(self._h5_index[position])
        try:
            values = self._opened()[name][rows]
        except H5PY_ERRORS as error:
            raise DataError(f"cannot read ({error})", path=self.path, record=self._record(position),
                            field=name) from None
        # rows of a memory map are a view of the file: copied (h5py's are already an owned array)
        values = np.array(values, dtype=np.float32, copy=True if isinstance(values, np.memmap) else None)
        if check:
            check_values(values, path=self.path, record=self._record(position), field=name)
            if name == "image_bb":
                check_box_corners(values, path=self.path, record=self._record(position), field=name)
        return values

    def _record(self, position: int) -> str:
        return f"image_id={int(self.image_ids[position])}"

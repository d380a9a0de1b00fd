"""Direct reading of the authors' HDF5 feature cache, so users who have it skip the TSV conversion.

Layout written by the reference pipeline (one file per split, e.g. ``train36.hdf5`` / ``val.hdf5``, with the
image-id map ``<stem>_imgid2idx.pkl`` next to it):

- adaptive boxes: ``image_features`` ``[R, D]``, ``image_bb`` ``[R, 4]``, ``spatial_features`` ``[R, 6]``
  and ``pos_boxes`` ``[I, 2]`` (rows ``[start, end)`` of each image);
- fixed boxes: ``image_features`` ``[I, n, D]``, ``image_bb`` ``[I, n, 4]``,
  ``spatial_features`` ``[I, n, 6]``.

The map gives each image id its index ``i`` in ``pos_boxes`` (or in the first axis). The layout and the row
ranges are checked when the file is opened; rows are read on demand, and as the cache is read in place (never
converted), the values of each image read are checked then, as the TSV reader checks them: finite, within
±:data:`ban.data.features.VALUE_LIMIT`, box corners with x2 ≥ x1 and y2 ≥ y1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ban.data.features import FeatureStore, check_box_corners, check_values
from ban.data.pickle_map import read_int_dict
from ban.errors import DataError

_WIDTHS = {"image_bb": 4, "spatial_features": 6}


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

    def __init__(
        self, path: str | os.PathLike[str], image_id_map: str | os.PathLike[str] | None = None
    ) -> None:
        self.path = self.location = Path(path)
        map_path = default_image_id_map(path) if image_id_map is None else Path(image_id_map)
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
        self._file: h5py.File | None = None
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
        state["_file"] = state["_file_pid"] = None
        return state

    def _opened(self) -> h5py.File:
        if self._file is None or self._file_pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._file_pid = os.getpid()
        return self._file

    def _row_range(self, position: int) -> tuple[int, int]:
        index = int(self._h5_index[position])
        if self.adaptive:
            return int(self.pos_boxes[index, 0]), int(self.pos_boxes[index, 1])
        return index * self.boxes_per_image, (index + 1) * self.boxes_per_image

    def _read(self, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        file = self._opened()
        if self.adaptive:
            rows: slice | int = slice(*self._row_range(position))
        else:
            rows = int(self._h5_index[position])
        where = f"image_id={int(self.image_ids[position])}"
        arrays = []
        for name in ("image_features", "spatial_features", "image_bb"):
            try:
                values = np.asarray(file[name][rows], dtype=np.float32)
            except H5PY_ERRORS as error:
                raise DataError(f"cannot read ({error})", path=self.path, record=where, field=name) from None
            check_values(values, path=self.path, record=where, field=name)
            arrays.append(values)
        features, spatial, boxes = arrays
        check_box_corners(boxes, path=self.path, record=where, field="image_bb")
        return features, spatial, boxes

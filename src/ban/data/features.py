"""Region-feature stores: reading the on-disk format training reads, memory-mapped.

A store maps an image id to its regions: features ``[n, D]``, the 6-d normalised spatial features ``[n, 6]``
(x1/w, y1/h, x2/w, y2/h, bw/w, bh/h) and the pixel boxes ``[n, 4]`` (x1, y1, x2, y2), where ``n`` is the
image's box count (10–100 for adaptive bottom-up features, 36 for the fixed ones).

Our store is a directory of ``.npy`` files (layout in docs/data-formats.md; written by
:mod:`ban.data.features_writer`). :meth:`FeatureStore.open` also reads the authors' HDF5 cache directly (see
:mod:`ban.data.features_hdf5`) and a ``features.json`` that lists several sources (:mod:`ban.data.features_listing`).
Readers open their files lazily in each process and never hold more than the rows asked for.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ban.data.distinct import repeated_positions
from ban.data.jsonfile import read_json_object, require, require_format_version
from ban.data.npyfile import read_npy
from ban.errors import DataError

STORE_FORMAT_VERSION = 1
STORE_META = "store.json"  # a store directory's description, written last
LISTING = "features.json"  # a prepared dataset's list of feature sources, its conversion first
HDF5_SUFFIXES = (".hdf5", ".h5")  # the authors' feature caches
FEATURE_DTYPES = ("float32", "float16")
VALUE_LIMIT = 65504.0
"""The largest magnitude a feature, spatial feature or box coordinate may have: the largest float16, so a float16
store holds every accepted value. Detector features and pixel boxes are orders of magnitude smaller; a value
like 3e38 would only overflow the model's first products into a non-finite loss."""
SOURCE_KINDS = ("a feature source is a store directory written by `ban prepare`, an .hdf5/.h5 cache or a "
                "features.json listing, or (for `ban prepare --features`) a bottom-up TSV file")
"""What :meth:`FeatureStore.open` and ``ban prepare --features`` read, for the messages refusing anything else."""


@dataclass
class FeatureRecord:
    """The regions of one image, as a detector produced them.

    ``boxes`` ``[n, 4]`` float32 pixel x1, y1, x2, y2; ``features`` ``[n, D]`` float32. ``path``/``line`` say
    where the record was read from (for error messages); they are not part of its value.
    """

    image_id: int
    image_w: int
    image_h: int
    boxes: np.ndarray
    features: np.ndarray
    path: str | None = field(default=None, compare=False, repr=False)
    line: int | None = field(default=None, compare=False, repr=False)

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


def spatial_features(boxes: np.ndarray, image_w: int, image_h: int) -> np.ndarray:
    """The 6-d normalised box geometry of the reference pipeline, computed in float32 in its order.

    ``boxes`` ``[n, 4]`` pixel x1, y1, x2, y2 → ``[n, 6]`` float32: x1/w, y1/h, x1/w + bw/w, y1/h + bh/h,
    bw/w, bh/h with bw = x2 − x1, bh = y2 − y1 (columns 2–3 equal x2/w, y2/h up to float32 rounding, computed
    exactly as the reference did).
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    width, height = np.float32(image_w), np.float32(image_h)
    scaled_x = boxes[:, 0] / width
    scaled_y = boxes[:, 1] / height
    scaled_w = (boxes[:, 2] - boxes[:, 0]) / width
    scaled_h = (boxes[:, 3] - boxes[:, 1]) / height
    columns = [scaled_x, scaled_y, scaled_x + scaled_w, scaled_y + scaled_h, scaled_w, scaled_h]
    return np.stack(columns, axis=1)


def check_values(values: np.ndarray, *, path: str | os.PathLike[str] | None, record: str, field: str) -> None:
    """A :class:`DataError` naming the first value of ``values`` (by its flat position) that is NaN, infinite or
    larger than :data:`VALUE_LIMIT` in magnitude."""
    if not values.size or (values.min() >= -VALUE_LIMIT and values.max() <= VALUE_LIMIT):  # NaN fails both
        return
    flat = values.reshape(-1)
    position = int(np.argmin(np.abs(flat) <= VALUE_LIMIT))
    value = flat[position]
    reason = f"larger than {VALUE_LIMIT:g} in magnitude" if np.isfinite(value) else "NaN or infinite"
    raise DataError(f"value {position} is {value!s}: {reason}", path=path, record=record, field=field)


def check_box_corners(boxes: np.ndarray, *, path: str | os.PathLike[str] | None, record: str, field: str) -> None:
    """A :class:`DataError` naming the first of ``boxes`` ``[n, 4]`` (pixel x1, y1, x2, y2) with x2 < x1 or
    y2 < y1. Zero-size boxes and boxes reaching past the image, which detector files hold, are accepted."""
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if not inverted.any():
        return
    box = int(np.argmax(inverted))
    x1, y1, x2, y2 = boxes[box].tolist()
    corner = "x2 < x1" if x2 < x1 else "y2 < y1"
    raise DataError(f"box {box} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has {corner} (expected pixel x1, y1, x2, y2)",
                    path=path, record=record, field=field)


def is_tsv_source(path: str | os.PathLike[str]) -> bool:
    """Whether a feature source given to ``ban prepare`` is a bottom-up TSV file to convert (any file, whatever
    its name, e.g. ``….tsv.1``), rather than one :meth:`FeatureStore.open` reads as it is: a store directory, an
    ``.hdf5`` / ``.h5`` cache or a ``.json`` list of sources."""
    path = Path(path)
    return not (path.is_dir() or path.suffix in HDF5_SUFFIXES or path.suffix == ".json")


def tsv_sources(sources: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The ``sources`` that are bottom-up TSV files to convert (:func:`is_tsv_source`), in their order."""
    return [Path(source) for source in sources if is_tsv_source(source)]


class FeatureStore(ABC):
    """Read-only access to region features by image id.

    Subclasses provide :attr:`image_ids` (``[I]`` int64, store order), :attr:`feature_dim`, :attr:`location`
    (the directory or file read, for messages), the row range of each image and the reading of rows. Instances
    are picklable (for DataLoader workers): open file handles and memory maps are dropped and reopened lazily in
    the receiving process.
    """

    image_ids: np.ndarray
    feature_dim: int
    location: Path

    def __init__(self, image_ids: np.ndarray) -> None:
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self._index = {int(image_id): i for i, image_id in enumerate(self.image_ids.tolist())}

    @staticmethod
    def open(path: str | os.PathLike[str]) -> FeatureStore:
        """Open our store directory, the authors' ``.hdf5`` cache (image-id pickle next to it), or a
        ``features.json`` listing several such sources."""
        path = Path(path)
        if path.is_dir():
            if (path / STORE_META).is_file():
                return NpyFeatureStore(path)
            if (path / LISTING).is_file():
                return FeatureStore.open(path / LISTING)
            if any(path.glob("*.npy")):  # a store's arrays without the store.json written last
                raise DataError("not a complete feature store (no store.json): rerun `ban prepare`", path=path)
            raise DataError(f"not a feature store (neither store.json nor features.json in it); {SOURCE_KINDS}",
                            path=path)
        if path.suffix in HDF5_SUFFIXES:
            from ban.data.features_hdf5 import Hdf5FeatureStore

            return Hdf5FeatureStore(path)
        if path.suffix == ".json":
            from ban.data.features_listing import open_sources_file

            return open_sources_file(path)
        if not path.exists():
            raise DataError("no such file or directory", path=path)
        raise DataError(f"not a feature store; {SOURCE_KINDS}", path=path)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._index

    def position(self, image_id: int) -> int:
        """Position of ``image_id`` in :attr:`image_ids`; ``KeyError`` if absent."""
        try:
            return self._index[int(image_id)]
        except KeyError:
            raise KeyError(f"image {image_id} has no features in this store") from None

    def check_images(self, image_ids: np.ndarray, *, path: str | os.PathLike[str],
                     record: Callable[[int], str]) -> None:
        """:class:`DataError` naming the first sample of a split (``record(sample)``, field ``image_id``, in the split
        file ``path``) whose image of ``image_ids`` ``[S]`` this store lacks: checked when the split is opened (one
        vectorised look-up), so that no read fails later with a ``KeyError``."""
        missing = ~np.isin(image_ids, self.image_ids)
        if missing.any():
            sample = int(np.argmax(missing))
            raise DataError(f"image {int(image_ids[sample])} has no features in the feature store {self.location}",
                            path=path, record=record(sample), field="image_id")

    def num_boxes(self, image_id: int) -> int:
        """Number of regions of ``image_id``."""
        start, end = self._row_range(self.position(image_id))
        return end - start

    def box_counts(self, image_ids: np.ndarray) -> np.ndarray:
        """:meth:`num_boxes` of each of ``image_ids`` ``[S]`` (repeats allowed: one look-up per distinct image) →
        ``[S]`` int64, from the index alone (no rows read)."""
        unique_ids, of_sample = np.unique(np.asarray(image_ids, dtype=np.int64), return_inverse=True)
        return np.array([self.num_boxes(image_id) for image_id in unique_ids.tolist()], dtype=np.int64)[of_sample]

    def get(self, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(features [n, D] float32, spatial [n, 6] float32, boxes [n, 4] float32 pixels)`` of one image."""
        return self._read(self.position(image_id))

    def boxes(self, image_id: int) -> np.ndarray:
        """``boxes [n, 4]`` float32 pixels of one image, equal to ``get(image_id)[2]``, read without its features
        (for matching boxes, e.g. ``ban prepare flickr30k``); ``KeyError`` if absent, as :meth:`get`."""
        return self._read_boxes(self.position(image_id))

    def image_size(self, image_id: int) -> tuple[int, int] | None:
        """``(width, height)`` in pixels of ``image_id`` as its source records it; None where the source keeps no
        image sizes (the authors' HDF5 cache)."""
        return self._image_size(self.position(image_id))

    def _image_size(self, position: int) -> tuple[int, int] | None:
        return None

    @abstractmethod
    def _row_range(self, position: int) -> tuple[int, int]:
        """Rows ``[start, end)`` of the image at ``position``."""

    @abstractmethod
    def _read(self, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, spatial features and boxes of the image at ``position`` (owned float32 arrays)."""

    @abstractmethod
    def _read_boxes(self, position: int) -> np.ndarray:
        """Boxes ``[n, 4]`` of the image at ``position`` (an owned float32 array), its other rows unread."""


class NpyFeatureStore(FeatureStore):
    """Our store directory (docs/data-formats.md), opened memory-mapped.

    Opening checks the structure, which costs a few reads of small arrays and ``.npy`` headers: ``store.json``'s
    fields; image ids unique; offsets rising from 0 to ``num_boxes``, at least one row per image; image sizes
    positive; ``features`` / ``spatial`` / ``boxes`` of shape ``[num_boxes, D / 6 / 4]``, of the recorded dtype,
    with all their rows in the file. Values are not scanned here nor on reads (the loader reads thousands of
    images a second): they were checked when the store was written from TSV rows.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = self.location = Path(directory)
        self.meta = _read_store_meta(self.directory / STORE_META)
        self.feature_dim = self.meta["feature_dim"]
        num_images = self.meta["num_images"]
        super().__init__(self._index_array("image_ids", (num_images,)))
        self.offsets = self._index_array("offsets", (num_images + 1,))
        self.image_sizes = self._index_array("image_sizes", (num_images, 2))
        self._check_index()
        self._check_row_arrays()
        self._arrays: dict[str, np.ndarray] | None = None

    def _load(self, name: str, mmap: bool = False) -> np.ndarray:
        """The store's ``<name>.npy`` (memory-mapped if ``mmap``); a :class:`DataError` naming it when it is
        missing or not a complete ``.npy`` file."""
        return read_npy(self.directory / f"{name}.npy", mmap=mmap, missing="missing: rerun `ban prepare`",
                        advice=": rerun `ban prepare`")

    def _index_array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """``<name>.npy``: integers of ``shape``, as int64."""
        array = self._load(name)
        path = self.directory / f"{name}.npy"
        if array.dtype.kind not in "iu":
            raise DataError(f"values of type {array.dtype}, expected integers", path=path)
        if array.shape != shape:
            raise DataError(f"shape {list(array.shape)}, expected {list(shape)} (store.json)", path=path)
        return array.astype(np.int64)

    def _check_index(self) -> None:
        """Image ids unique, each image's rows a non-empty range ending at ``num_boxes``, sizes positive."""
        if len(self._index) != len(self.image_ids):
            first, second = repeated_positions(self.image_ids)[:2].tolist()
            raise DataError(f"image {int(self.image_ids[first])} appears twice (entries {first} and {second})",
                            path=self.directory / "image_ids.npy")
        offsets_path = self.directory / "offsets.npy"
        if self.offsets[0] != 0:
            raise DataError(f"does not start at 0 (starts at {int(self.offsets[0])})", path=offsets_path)
        empty = np.flatnonzero(np.diff(self.offsets) <= 0)
        if len(empty):
            position = int(empty[0])
            start, end = int(self.offsets[position]), int(self.offsets[position + 1])
            raise DataError(f"does not rise from position {position} to {position + 1} ({start} → {end}: "
                            f"{end - start} boxes, at least 1 expected)", path=offsets_path,
                            record=f"image_id={int(self.image_ids[position])}")
        if self.offsets[-1] != self.meta["num_boxes"]:
            raise DataError(f"offsets end at {int(self.offsets[-1])}, store.json says num_boxes "
                            f"{self.meta['num_boxes']}", path=offsets_path)
        bad_sizes = np.flatnonzero((self.image_sizes <= 0).any(axis=1))
        if len(bad_sizes):
            position = int(bad_sizes[0])
            raise DataError(f"size {self.image_sizes[position].tolist()} is not positive",
                            path=self.directory / "image_sizes.npy", record=f"image_id={int(self.image_ids[position])}")

    def _check_row_arrays(self) -> None:
        """``features`` / ``spatial`` / ``boxes``: shape, dtype and a file that holds every row (headers only;
        the mappings are dropped again, each process maps the files itself)."""
        widths = {"features": self.feature_dim, "spatial": 6, "boxes": 4}
        for name, width in widths.items():
            array = self._load(name, mmap=True)
            expected_dtype = np.dtype(self.meta["dtype"] if name == "features" else np.float32)
            path = self.directory / f"{name}.npy"
            if array.shape != (self.meta["num_boxes"], width):
                raise DataError(f"shape {list(array.shape)}, expected {[self.meta['num_boxes'], width]} (store.json)",
                                path=path)
            if array.dtype != expected_dtype:
                raise DataError(f"values of type {array.dtype}, expected {expected_dtype}", path=path)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def _mapped(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {name: self._load(name, mmap=True) for name in ("features", "spatial", "boxes")}
        return self._arrays

    def _row_range(self, position: int) -> tuple[int, int]:
        return int(self.offsets[position]), int(self.offsets[position + 1])

    def _image_size(self, position: int) -> tuple[int, int]:
        width, height = self.image_sizes[position].tolist()
        return width, height

    def _read(self, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start, end = self._row_range(position)
        arrays = self._mapped()
        return (
            np.array(arrays["features"][start:end], dtype=np.float32),
            np.array(arrays["spatial"][start:end], dtype=np.float32),
            np.array(arrays["boxes"][start:end], dtype=np.float32),
        )

    def _read_boxes(self, position: int) -> np.ndarray:
        start, end = self._row_range(position)
        return np.array(self._mapped()["boxes"][start:end], dtype=np.float32)


def _read_store_meta(path: Path) -> dict[str, Any]:
    """``store.json``: an object with this format's version, positive ``feature_dim`` / ``num_images`` /
    ``num_boxes`` and a ``dtype`` of :data:`FEATURE_DTYPES`."""
    meta = read_json_object(path, missing="not a complete feature store (no store.json): rerun `ban prepare`")
    require_format_version(meta, STORE_FORMAT_VERSION, path)
    for name in ("feature_dim", "num_images", "num_boxes"):
        if require(meta, name, int, path, None) <= 0:
            raise DataError(f"must be positive, got {meta[name]}", path=path, field=name)
    if meta.get("dtype") not in FEATURE_DTYPES:
        raise DataError(f"{meta.get('dtype')!r} is not one of {FEATURE_DTYPES}", path=path, field="dtype")
    return meta


class UnionFeatureStore(FeatureStore):
    """Several stores seen as one (e.g. the authors' train and val HDF5 caches). Image ids must be unique."""

    def __init__(self, stores: Sequence[FeatureStore], description: str = "feature sources") -> None:
        if not stores:
            raise DataError("no feature sources given", path=description)
        self.location = Path(description)
        dims = {store.feature_dim for store in stores}
        if len(dims) != 1:
            widths = ", ".join(f"{store.location} ({store.feature_dim}-d)" for store in stores)
            raise DataError(f"sources have different feature widths: {widths}", path=description,
                            field="feature_dim")
        self.stores = list(stores)
        self.feature_dim = dims.pop()
        super().__init__(np.concatenate([store.image_ids for store in stores]))
        if len(self._index) != len(self.image_ids):
            image_id = int(self.image_ids[repeated_positions(self.image_ids)[0]])
            holders = ", ".join(str(store.location) for store in stores if image_id in store)
            raise DataError(f"image {image_id} appears in more than one source: {holders}", path=description,
                            field="image_id")
        self._where = [(s, p) for s, store in enumerate(stores) for p in range(len(store))]

    def _row_range(self, position: int) -> tuple[int, int]:
        store, inner = self._where[position]
        return self.stores[store]._row_range(inner)

    def _read(self, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        store, inner = self._where[position]
        return self.stores[store]._read(inner)

    def _read_boxes(self, position: int) -> np.ndarray:
        store, inner = self._where[position]
        return self.stores[store]._read_boxes(inner)

    def _image_size(self, position: int) -> tuple[int, int] | None:
        store, inner = self._where[position]
        return self.stores[store]._image_size(inner)

"""Region-feature stores: the on-disk format training reads, memory-mapped, plus the writer that builds it.

A store maps an image id to its regions: features ``[n, D]``, the 6-d normalised spatial features ``[n, 6]``
(x1/w, y1/h, x2/w, y2/h, bw/w, bh/h) and the pixel boxes ``[n, 4]`` (x1, y1, x2, y2), where ``n`` is the
image's box count (10–100 for adaptive bottom-up features, 36 for the fixed ones).

Our store is a directory of ``.npy`` files (layout in docs/data-formats.md). :meth:`FeatureStore.open` also
reads the authors' HDF5 cache directly (see :mod:`ban.data.features_hdf5`) and a ``features.json`` that lists
several sources. Readers open their files lazily in each process and never hold more than the rows asked for.
"""

from __future__ import annotations

import array
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ban.data.atomic import atomic_path, write_json
from ban.data.jsonfile import read_json, require
from ban.data.npyfile import read_npy
from ban.data.textfile import read_bytes, resolve_path
from ban.errors import DataError

STORE_FORMAT_VERSION = 1
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
    return not (path.is_dir() or path.suffix in (".hdf5", ".h5", ".json"))


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
            if (path / "store.json").is_file():
                return NpyFeatureStore(path)
            if (path / "features.json").is_file():
                return FeatureStore.open(path / "features.json")
            if any(path.glob("*.npy")):  # a store's arrays without the store.json written last
                raise DataError("not a complete feature store (no store.json): rerun `ban prepare`", path=path)
            raise DataError(f"not a feature store (neither store.json nor features.json in it); {SOURCE_KINDS}",
                            path=path)
        if path.suffix in (".hdf5", ".h5"):
            from ban.data.features_hdf5 import Hdf5FeatureStore

            return Hdf5FeatureStore(path)
        if path.suffix == ".json":
            return _open_sources_file(path)
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
        self.meta = _read_store_meta(self.directory / "store.json")
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
            values, counts = np.unique(self.image_ids, return_counts=True)
            raise DataError(f"image {int(values[counts > 1][0])} appears twice", path=self.directory / "image_ids.npy")
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
    meta = read_json(path, missing="not a complete feature store (no store.json): rerun `ban prepare`")
    if not isinstance(meta, dict):
        raise DataError(f"expected an object, got {type(meta).__name__}", path=path)
    if meta.get("format_version") != STORE_FORMAT_VERSION:
        raise DataError(f"format version {meta.get('format_version')!r}, expected {STORE_FORMAT_VERSION}: rerun "
                        "`ban prepare`", path=path, field="format_version")
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
            values, counts = np.unique(self.image_ids, return_counts=True)
            image_id = int(values[counts > 1][0])
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


def _open_sources_file(path: Path) -> FeatureStore:
    """Open the sources of a ``features.json``: ``{"sources": [path, ...]}``, absolute or relative to (and then
    inside) its folder, and optionally ``"identities"``: per source, None or the :func:`source_identity` it had
    when the file was written, checked here (:class:`DataError` naming the source and the file that changed)."""
    data = read_json(path)
    sources = data.get("sources") if isinstance(data, dict) else None
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise DataError("expected a non-empty list of paths: a .json is read as a features.json listing "
                        f"({{\"sources\": [path, …]}}); {SOURCE_KINDS}", path=path, field="sources")
    folder = resolve_path(path.parent)
    for source in sources:
        if not Path(source).is_absolute() and not resolve_path(folder / source, "sources").is_relative_to(folder):
            raise DataError(f"relative source {source!r} leads outside {folder}", path=path, field="sources")
        if not (path.parent / source).exists():
            raise DataError(f"source {source} is not there (moved or deleted?): put it back, or prepare the dataset "
                            "again", path=path, field="sources")
    _check_identities(path, sources, data.get("identities"))
    stores = [FeatureStore.open(path.parent / source) for source in sources]
    return stores[0] if len(stores) == 1 else UnionFeatureStore(stores, description=str(path))


def write_sources_file(path: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]]) -> None:
    """Write a ``features.json`` listing existing sources (store directories, HDF5 caches, listings): a source
    inside the file's folder is recorded relative to it (the folder can move, and the source with it), any other
    by its absolute path and, under ``"identities"`` (None for the sources inside), its :func:`source_identity`,
    so that opening the file later notices a source prepared again or replaced since."""
    folder = Path(path).resolve().parent
    entries: list[str] = []
    identities: list[dict[str, dict[str, Any]] | None] = []
    for source in sources:
        resolved = Path(source).resolve()
        inside = resolved.is_relative_to(folder)
        entries.append(str(resolved.relative_to(folder)) if inside else str(resolved))
        identities.append(None if inside else source_identity(resolved))
    write_json(path, {"sources": entries, "identities": identities})


def source_identity(source: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """What identifies a feature source read in place, cheaply (no data file is read): file path → stamp.

    A store directory: the SHA-256 of its ``store.json`` (a store is never changed in place; preparing it again
    writes a new ``store.json``, which records the stamps of the files converted); an HDF5 cache: size and
    modification time of the ``.hdf5`` and of its image-id pickle; a ``features.json`` (or a folder holding
    one): the SHA-256 of that file and the identities of its sources.
    """
    source = Path(source)
    if source.is_dir():
        if (source / "store.json").is_file():
            return {str(source / "store.json"): _sha256(source / "store.json")}
        source = source / "features.json"
    if source.suffix == ".json":
        identity = {str(source): _sha256(source)}
        data = read_json(source) if source.is_file() else None
        for inner in data.get("sources", []) if isinstance(data, dict) else []:
            identity.update(source_identity(source.parent / inner))
        return identity
    from ban.data.features_hdf5 import default_image_id_map

    return {str(file): _size_and_time(file) for file in (source, default_image_id_map(source))}


def _sha256(path: Path) -> dict[str, Any]:
    if not path.is_file():  # a missing file is part of an identity (opening the source then says what is wrong)
        return {"missing": True}
    return {"sha256": hashlib.sha256(read_bytes(path)).hexdigest()}


def _size_and_time(path: Path) -> dict[str, Any]:
    try:
        stat = path.stat()
    except OSError:
        return {"missing": True}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _check_identities(path: Path, sources: list[str], identities: Any) -> None:
    """:class:`DataError` for the first source of a ``features.json`` at ``path`` whose recorded identity (see
    :func:`write_sources_file`; files written before have none) differs from its identity now."""
    if identities is None:
        return
    if not isinstance(identities, list) or len(identities) != len(sources) \
            or not all(identity is None or isinstance(identity, dict) for identity in identities):
        raise DataError(f"expected a list of {len(sources)} objects or nulls, one per source", path=path,
                        field="identities")
    for source, recorded in zip(sources, identities, strict=True):
        if recorded is None:
            continue
        current = source_identity(path.parent / source)
        changed = sorted(set(recorded) ^ set(current) | {file for file in set(recorded) & set(current)
                                                           if recorded[file] != current[file]})
        if changed:
            raise DataError(f"source {source} changed since this dataset was prepared ({', '.join(changed)} "
                            "differs): prepare it again", path=path, field="sources")


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
        write_json(temp / "store.json", meta)
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
        meta = read_json(Path(out_dir) / "store.json")
    except DataError:  # missing or damaged: convert again
        return False
    return isinstance(meta, dict) and meta.get("sources") == list(sources)

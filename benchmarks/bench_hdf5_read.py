"""Reading the authors' HDF5 feature cache in place (images/s), against ban's own store of the same images.

Writes an adaptive cache in the reference layout (``image_features`` / ``image_bb`` / ``spatial_features`` /
``pos_boxes`` plus the ``_imgid2idx.pkl`` map) of ``--images`` images of 10–100 boxes × ``--dim`` floats, and the
same images as a store directory. Then, for each, in one process and from the page cache (both files just
written): ``get()`` of every image once in random order (the HDF5 cache checks each image's values on its first
read), a second such pass (values already checked), and the boxes alone (``boxes()``, what ``ban prepare
flickr30k`` needs) against ``get()[2]``. Each figure is the median of ``--repeats`` passes (range in the table).

    python benchmarks/bench_hdf5_read.py --images 5000 --json benchmarks/bench_hdf5_read.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from ban.data.features import FeatureRecord, FeatureStore, spatial_features
from ban.data.features_writer import write_feature_store
from ban.machine import code_version, describe_machine


def machine() -> str:
    return (f"{describe_machine()}, Python {platform.python_version()}, numpy {np.__version__}, h5py "
            f"{h5py.__version__} (HDF5 {h5py.version.hdf5_version}), {code_version()}")


class Images:
    """``count`` images of 10–100 boxes (sorted pixel corners inside 640×480) and features ``[n, dim]``, made
    again on demand from the seed (the set is larger than memory need be)."""

    def __init__(self, count: int, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.seed, self.counts = seed, rng.integers(10, 101, count)
        self.pool = rng.standard_normal((100, dim)).astype(np.float32)  # rows reused with a per-image offset

    def __iter__(self) -> Iterator[FeatureRecord]:
        for index, count in enumerate(self.counts.tolist()):
            rng = np.random.default_rng([self.seed, index])
            corners = np.sort(rng.uniform(0, 480, (count, 2, 2)), axis=1).reshape(count, 4).astype(np.float32)
            yield FeatureRecord(image_id=index * 7 + 1, image_w=640, image_h=480, boxes=corners,
                                features=self.pool[:count] + np.float32(index % 97))


def write_authors_hdf5(path: Path, images: Images) -> None:
    """The reference converter's adaptive layout, written one image at a time, and its image-id map."""
    ends = np.cumsum(images.counts)
    with h5py.File(path, "w") as file:
        file["pos_boxes"] = np.stack([ends - images.counts, ends], axis=1)
        datasets = {name: file.create_dataset(name, (int(ends[-1]), width), "f")
                    for name, width in (("image_features", images.pool.shape[1]), ("image_bb", 4),
                                        ("spatial_features", 6))}
        mapping = {}
        for index, (record, end) in enumerate(zip(images, ends.tolist(), strict=True)):
            rows = slice(end - record.num_boxes, end)
            datasets["image_features"][rows] = record.features
            datasets["image_bb"][rows] = record.boxes
            datasets["spatial_features"][rows] = spatial_features(record.boxes, record.image_w, record.image_h)
            mapping[record.image_id] = index
    path.with_name(f"{path.stem}_imgid2idx.pkl").write_bytes(pickle.dumps(mapping, protocol=2))


def images_per_second(read: Callable[[int], object], image_ids: list[int]) -> float:
    start = time.perf_counter()
    for image_id in image_ids:
        read(image_id)
    return len(image_ids) / (time.perf_counter() - start)


def boxes_via_get(store: FeatureStore) -> Callable[[int], np.ndarray]:
    return lambda image_id: store.get(image_id)[2]


def measure(path: Path, repeats: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """images/s of the readings described in the module docstring, for the source at ``path``: median, min, max
    over ``repeats`` passes (the first-read pass opens the source afresh each time)."""
    rng = np.random.default_rng(seed)
    runs: dict[str, list[float]] = {"get_first_read": [], "get_again": [], "boxes": [], "get_boxes_only": []}
    for _ in range(repeats):
        store = FeatureStore.open(path)
        order = rng.permutation(store.image_ids).tolist()
        runs["get_first_read"].append(images_per_second(store.get, order))
        runs["get_again"].append(images_per_second(store.get, order))
        # boxes of images not read before (a store opened afresh), as ``ban prepare flickr30k`` reads them
        runs["boxes"].append(images_per_second(FeatureStore.open(path).boxes, order))
        runs["get_boxes_only"].append(images_per_second(boxes_via_get(FeatureStore.open(path)), order))
    return {name: {"median": float(np.median(values)), "min": min(values), "max": max(values)}
            for name, values in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="images to write (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=2048, help="feature width (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per figure (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, help="where to write the cache and store (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench_hdf5_read_")) if args.workdir is None else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        made = Images(args.images, args.dim)
        boxes = int(made.counts.sum())
        write_authors_hdf5(workdir / "cache.hdf5", made)
        write_feature_store(made, workdir / "store")
        sources = {"hdf5": workdir / "cache.hdf5", "store": workdir / "store"}
        results = {name: measure(path, args.repeats) for name, path in sources.items()}
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"machine": machine(), "load_average": os.getloadavg()[0], "images": args.images, "boxes": boxes,
              "dim": args.dim, "repeats": args.repeats, "images_per_s": results}
    labels = {"get_first_read": "get(), first read of each image", "get_again": "get(), images read before",
              "boxes": "boxes()", "get_boxes_only": "get()[2] (boxes via a full read)"}
    print(f"{args.images:,} images, {boxes:,} boxes × {args.dim} floats; images/s, median (min–max) of "
          f"{args.repeats}")
    print(f"{'reading':36s} {'HDF5 cache':>24s} {'ban store':>24s}")
    for key, label in labels.items():
        cells = [f"{r[key]['median']:,.0f} ({r[key]['min']:,.0f}–{r[key]['max']:,.0f})"
                 for r in (results["hdf5"], results["store"])]
        print(f"{label:36s} {cells[0]:>24s} {cells[1]:>24s}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Reading the authors' HDF5 cache before and after session 14's reader (issue 7): the reader of commit cac7ae8
(`git show cac7ae8:src/ban/data/features_hdf5.py > OLD.py`) against the current one, alternated, on a cache that
`benchmarks/bench_hdf5_read.py --workdir DIR` wrote (DIR/cache.hdf5): `get()` of every image once, in random order,
from a freshly opened store each round (so every image is read and checked for the first time).

    git show cac7ae8:src/ban/data/features_hdf5.py > /tmp/features_hdf5_before.py
    python benchmarks/bench_hdf5_read.py --images 2000 --workdir /tmp/h5 --json /tmp/h5/bench.json
    python benchmarks/hdf5_read_ab.py --cache /tmp/h5/cache.hdf5 --before /tmp/features_hdf5_before.py --rounds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import numpy as np

from ban.data import features_hdf5
from ban.machine import code_version, describe_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--before", type=Path, required=True, help="the earlier features_hdf5.py")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("features_hdf5_before", args.before)
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)

    class Before(before.Hdf5FeatureStore):
        """The earlier reader, with the boxes-only read the store interface has gained since: a full read."""

        def _read_boxes(self, position: int) -> np.ndarray:
            return self._read(position)[2]

    readers = {"before (cac7ae8)": Before, "after": features_hdf5.Hdf5FeatureStore}
    image_ids = readers["after"](args.cache).image_ids.tolist()
    order = [image_ids[i] for i in np.random.default_rng(0).permutation(len(image_ids))]
    rates: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(args.rounds):
        for name, reader in readers.items():
            store = reader(args.cache)
            began = time.perf_counter()
            for image_id in order:
                store.get(image_id)
            rates[name].append(len(order) / (time.perf_counter() - began))
    print(f"{describe_machine()}, {code_version()}; {len(order):,} images, get() first read, images/s over "
          f"{args.rounds} alternated rounds")
    for name, values in rates.items():
        print(f"{name:<18} median {statistics.median(values):>8,.0f}  (range {min(values):,.0f}–{max(values):,.0f})")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(), "code": code_version(), "images": len(order),
                                         "images_per_s": rates}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Feature pipeline benchmark: TSV → store conversion (MiB/s, peak memory), the image-id pass ``ban prepare``
makes before it (MiB/s), and store random access (samples/s).
Every "mb" in option names and JSON keys is a MiB (2²⁰ bytes).

Writes a synthetic bottom-up TSV of ``--size-gb`` (adaptive 10–100 boxes of ``--dim`` floats, the official
encoding), converts it in a child process whose address space may grow by at most ``--cap-mb`` after its imports
(RLIMIT_AS), and records the child's peak resident memory. Then reads random images from the finished store.

    python benchmarks/bench_features.py --size-gb 2 --json benchmarks/bench_features.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ban.machine import code_version, describe_machine


def machine() -> str:
    return f"{describe_machine()}, Python {platform.python_version()}, numpy {np.__version__}, {code_version()}"


def write_tsv(path: Path, size_bytes: int, dim: int, seed: int = 0) -> tuple[int, int]:
    """Write images until the file reaches ``size_bytes``; returns (images, boxes)."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((100, dim)).astype(np.float32)  # rows reused with a per-image offset
    images = boxes_total = 0
    with open(path, "wb") as file:
        while file.tell() < size_bytes:
            count = int(rng.integers(10, 101))
            boxes = np.sort(rng.uniform(0, 600, (count, 4)).astype(np.float32), axis=1)
            features = pool[:count] + np.float32(images % 97)
            line = b"\t".join([str(images + 1).encode(), b"640", b"480", str(count).encode(),
                               base64.b64encode(boxes.tobytes()), base64.b64encode(features.tobytes())])
            file.write(line + b"\r\n")
            images += 1
            boxes_total += count
    return images, boxes_total


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child_convert(tsv: Path, store: Path, cap_mb: int) -> None:
    """Runs in the child: imports, cap the address space, convert, print a JSON line of measurements."""
    from ban.data.features_tsv import iter_tsv_files
    from ban.data.features_writer import write_feature_store

    baseline_rss, baseline_vm = status_kb("VmRSS"), status_kb("VmSize")
    limit = (baseline_vm + cap_mb * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    start = time.perf_counter()
    summary = write_feature_store(iter_tsv_files([tsv], progress=False), store)
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "seconds": elapsed, "images": summary.num_images, "boxes": summary.num_boxes,
        "baseline_rss_mb": baseline_rss / 1024, "peak_rss_mb": status_kb("VmHWM") / 1024,
        "address_space_cap_mb": cap_mb, "address_space_limit_mb": limit / 2**20,
    }))


def drop_page_cache() -> None:
    """Empty the kernel's page cache (root only), so that the next read of the TSV comes from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1")
    except OSError as error:
        sys.exit(f"--cold needs to write /proc/sys/vm/drop_caches (root): {error}")


def bench_image_id_pass(tsv: Path, jump: bool) -> dict:
    """The pass over the TSV's image ids that ``ban prepare`` makes before converting: jumping from line to line
    (its first reading), or line by line (its exact re-reading, when a wanted image looks missing)."""
    from ban.data.features_tsv import iter_tsv_image_ids

    start = time.perf_counter()
    images = sum(1 for _ in iter_tsv_image_ids(tsv, jump=jump))
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "images": images, "mb_per_s": tsv.stat().st_size / 2**20 / elapsed}


def bench_reader(store_path: Path, samples: int, seed: int = 0) -> dict:
    from ban.data.features import FeatureStore

    store = FeatureStore.open(store_path)
    rng = np.random.default_rng(seed)
    ids = rng.choice(store.image_ids, size=samples)
    store.get(int(ids[0]))
    start = time.perf_counter()
    rows = 0
    for image_id in ids.tolist():
        features, _, _ = store.get(image_id)
        rows += len(features)
    elapsed = time.perf_counter() - start
    result = {"samples": samples, "seconds": elapsed, "samples_per_s": samples / elapsed,
              "mb_per_s": rows * store.feature_dim * 4 / elapsed / 2**20}
    result.update(bench_batches(store, rng))
    return result


def bench_batches(store, rng: np.random.Generator, batch_size: int = 256, batches: int = 30) -> dict:
    """Random images read and padded into training batches by ``collate_vqa`` in one process with one torch
    thread (as in a DataLoader worker); the median batch time after 3 warm-up batches."""
    import torch

    from ban.data.collate import collate_vqa

    torch.set_num_threads(1)

    question = torch.zeros(14, dtype=torch.int64)
    target = torch.zeros(3129)
    times = []
    for _ in range(batches + 3):
        start = time.perf_counter()
        samples = []
        for image_id in rng.choice(store.image_ids, size=batch_size).tolist():
            features, spatial, _ = store.get(image_id)
            samples.append({"features": torch.from_numpy(features), "boxes": torch.from_numpy(spatial),
                            "question": question, "target": target, "question_id": image_id})
        collate_vqa(samples)
        times.append(time.perf_counter() - start)
    median = float(np.median(times[3:]))
    return {"batch_size": batch_size, "batch_seconds_median": median, "batched_samples_per_s": batch_size / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="TSV size to generate (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--cap-mb", type=int, default=160,
                        help="address space the converter may add after its imports (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=20000, help="random reads from the store")
    parser.add_argument("--workdir", type=Path, help="where to write the TSV and store (default: a temp dir)")
    parser.add_argument("--cold", action="store_true",
                        help="empty the page cache before the image-id pass and before the conversion (root), so "
                             "both read the TSV from the disk (default: both find it cached, just written)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--child", nargs=3, metavar=("TSV", "STORE", "CAP_MB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_convert(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench_features_")) if args.workdir is None else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        tsv, store = workdir / "features.tsv", workdir / "store"
        start = time.perf_counter()
        images, boxes = write_tsv(tsv, int(args.size_gb * 2**30), args.dim)
        generated = time.perf_counter() - start
        tsv_mb = tsv.stat().st_size / 2**20
        passes = {}
        for name, jump in (("image_id_pass", True), ("image_id_pass_line_by_line", False)):
            if args.cold:
                drop_page_cache()
            passes[name] = bench_image_id_pass(tsv, jump)
        if args.cold:
            drop_page_cache()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        child = subprocess.run([sys.executable, __file__, "--child", str(tsv), str(store), str(args.cap_mb)],
                               capture_output=True, text=True, env=env, check=False)
        if child.returncode:
            sys.exit(f"conversion failed:\n{child.stderr}")
        conversion = json.loads(child.stdout.strip().splitlines()[-1])
        conversion["tsv_mb"] = tsv_mb
        conversion["mb_per_s"] = tsv_mb / conversion["seconds"]
        conversion["tsv_over_cap"] = tsv_mb / args.cap_mb
        conversion["working_mb"] = conversion["peak_rss_mb"] - conversion["baseline_rss_mb"]
        reader = bench_reader(store, args.samples)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results = {
        "machine": machine(), "load_average": os.getloadavg()[0], "page_cache": "cold" if args.cold else "warm",
        "tsv": {"images": images, "boxes": boxes, "mb": tsv_mb, "generate_seconds": generated},
        **passes, "conversion": conversion, "reader": reader,
    }
    rows = [
        ("TSV size", f"{tsv_mb:,.0f} MiB ({images:,} images, {boxes:,} boxes, {args.dim}-d)"),
        *((label, f"{passes[name]['mb_per_s']:.0f} MiB/s of TSV ({passes[name]['seconds']:.2f} s, "
                  f"{passes[name]['seconds'] / conversion['seconds']:.0%} of the conversion's time)")
          for label, name in (("image-id pass, jumping (ban prepare's)", "image_id_pass"),
                              ("image-id pass, line by line (re-reading)", "image_id_pass_line_by_line"))),
        ("conversion throughput", f"{conversion['mb_per_s']:.1f} MiB/s of TSV ({conversion['seconds']:.1f} s)"),
        ("address-space cap after imports", f"{args.cap_mb} MiB (TSV is {conversion['tsv_over_cap']:.1f}× larger)"),
        ("peak RSS of the converter", f"{conversion['peak_rss_mb']:.0f} MiB "
                                      f"(after imports {conversion['baseline_rss_mb']:.0f} MiB, "
                                      f"working {conversion['working_mb']:.0f} MiB)"),
        ("store random access", f"{reader['samples_per_s']:,.0f} images/s ({reader['mb_per_s']:.0f} MiB/s, "
                                f"page cache warm)"),
        ("random batches of 256 + collate_vqa",
         f"{reader['batched_samples_per_s']:,.0f} samples/s (1 process, 1 thread, median batch)"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"machine: {results['machine']}, load average {os.getloadavg()[0]:.1f} at the end; TSV read "
          f"{'from the disk (page cache emptied)' if args.cold else 'from the page cache'}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

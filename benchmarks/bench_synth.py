"""Generation speed of `ban synth`: the default demo size and a VQA-2.0-sized set.

    python benchmarks/bench_synth.py                          # demo (2,800 images) at 2048-d and 256-d,
                                                              # and 82,783 images (≈ 440k questions) at 256-d
    python benchmarks/bench_synth.py --images 10000           # a smaller "large" run
    python benchmarks/bench_synth.py --json results.json

Prints a table (wall time, CPU time of all processes, images/s, questions/s, bytes written) and writes JSON.
The machine (CPU count, model, load average before each run) is recorded: on a shared machine the load
average says how much of it the run had.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from ban.data.synthetic import DEFAULT_IMAGES, default_flickr_images, default_workers, generate
from ban.machine import cpu_model


def directory_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def measure(name: str, images: int, feature_dim: int, png: bool, workers: int | None, scratch: Path) -> dict:
    out = scratch / name
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    workers = default_workers(images + default_flickr_images(images)) if workers is None else workers  # generate's
    before, start = os.times(), time.perf_counter()
    stats = generate(out, seed=0, num_images=images, feature_dim=feature_dim, write_images=png, workers=workers)
    wall = time.perf_counter() - start
    after = os.times()
    cpu = sum(after[:4]) - sum(before[:4])  # user + system, this process and its finished children
    questions = sum(split.get("questions", 0) for split in stats["vqa"].values())
    all_images = images + stats["flickr_images"]
    row = {
        "run": name,
        "vqa_images": images,
        "flickr_images": stats["flickr_images"],
        "questions": questions,
        "feature_dim": feature_dim,
        "png": png,
        "workers": workers,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "images_per_s": round(all_images / wall, 1),
        "questions_per_s": round(questions / wall, 1),
        "bytes": directory_bytes(out),
        "load_average_before": round(load, 2),
        "question_only_val": stats["baselines"]["question_only"]["overall"],
    }
    shutil.rmtree(out)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=82783, help="VQA images of the large run (VQA 2.0 train)")
    parser.add_argument("--large-feature-dim", type=int, default=256, help="feature width of the large run")
    parser.add_argument("--demo-images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--no-png", action="store_true", help="skip PNG rendering in every run")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="the directory (made if missing) under which the runs write; each run's output is "
                             "deleted after it")
    parser.add_argument("--json", type=Path,
                        help="write the runs as JSON here (the recorded run: benchmarks/bench_synth.json)")
    args = parser.parse_args()
    runs = [("demo-2048", args.demo_images, 2048), ("demo-256", args.demo_images, 256)]
    if not args.skip_large:
        runs.append((f"large-{args.large_feature_dim}", args.images, args.large_feature_dim))
    if args.scratch is not None:
        args.scratch.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_synth_", dir=args.scratch))
    try:
        rows = [measure(name, n, d, not args.no_png, args.workers, scratch) for name, n, d in runs]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    machine = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    print(f"machine: {machine['cpu']}, {machine['cpus']} CPUs, Python {machine['python']}")
    header = f"{'run':<12}{'images':>9}{'questions':>11}{'dim':>6}{'wall s':>9}{'cpu s':>9}{'img/s':>9}"
    print(header + f"{'q/s':>10}{'GB':>8}{'load':>7}")
    for r in rows:
        print(
            f"{r['run']:<12}{r['vqa_images'] + r['flickr_images']:>9}{r['questions']:>11}{r['feature_dim']:>6}"
            f"{r['wall_s']:>9}{r['cpu_s']:>9}{r['images_per_s']:>9}{r['questions_per_s']:>10}"
            f"{r['bytes'] / 1e9:>8.2f}{r['load_average_before']:>7}"
        )
    if args.json is not None:
        record = {"machine": machine, "runs": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()

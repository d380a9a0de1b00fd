"""End-to-end epoch time from a prepared store, and the projected time of the paper's schedule (issue 7).

    python benchmarks/bench_epoch.py --data DATA_DIR [DATA_DIR ...] --json benchmarks/bench_epoch.json

For every prepared VQA dataset given (make a VQA-2.0-sized one with `ban synth --images 115896 --flickr-images 0
--no-png --feature-dim 256 --boxes bottom-up` and `ban prepare vqa2`: its train split is 82,783 images and ≈ 444k
questions with bottom-up's 10–100 boxes per image):

1. the data path alone: one epoch of the train split through the loader `ban train` uses (seeded shuffle, the
   VQA collate padding boxes per batch), nothing else — questions/s and feature MB/s; with ``--resident``, also
   the same epoch gathered from `--set resident=true`'s in-memory copy (`ban.data.resident`), and its build time;
   with ``--bucket``, each of those again with batches grouped by box count, as `--set bucket_boxes=true` cuts
   them (scenes with bottom-up's box counts: `ban synth --boxes bottom-up`);
2. with ``--train-epoch``, the first dataset only: `ban train --data DATA --preset tiny --epochs 1` as a
   subprocess, the epoch's own time and samples/s from its metrics.jsonl (data loading included);
3. the paper-best training step at ``--batch-size`` (synthetic tensors at paper vocabulary sizes, adaptive
   boxes, `ban train`'s default precision on this machine), and from it and (1) the projected time of one epoch
   of VQA 2.0 train and of the paper's 13 epochs on train+val, and on train+val+Visual Genome with
   ``--vg-questions N`` (the vg-train and vg-val question counts of a `ban prepare vqa2 --vg` manifest). The
   loader row projected with is the first of the paper's feature width (2,048) with no workers, else the first.

Prints a table and writes JSON. Every number carries the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ban.benchmark import BenchSettings, measure
from ban.data.resident import ResidentVQA
from ban.engine.config import resolve_device
from ban.engine.distributed import ShardedBatches
from ban.engine.precision import resolve_precision
from ban.engine.tasks import Task, make_task
from ban.heap import keep_freed_memory
from ban.machine import code_version, describe_machine

VQA2_TRAIN_QUESTIONS = 443_757
VQA2_TRAINVAL_QUESTIONS = 443_757 + 214_354
PAPER_EPOCHS = 13
PAPER_FEATURE_DIM = 2048


def epoch_batches(task: Task, data: Dataset, batch_size: int, bucket: bool) -> ShardedBatches:
    """One epoch's batches of ``data`` as `ban train` cuts them (seed 1204, epoch 0); ``bucket``: grouped by box
    count, as `--set bucket_boxes=true` does."""
    sizes = task.box_counts(data) if bucket else None
    return ShardedBatches(len(data), batch_size, seed=1204, epoch=0, sizes=sizes)


def loader_epoch(data_dir: Path, batch_size: int, workers: int, bucket: bool) -> dict:
    """Iterate one epoch of the train split as `ban train` does; questions/s and feature bytes/s."""
    task = make_task("vqa", data_dir)
    data = task.dataset(("train",))
    loader = DataLoader(data, batch_sampler=epoch_batches(task, data, batch_size, bucket), collate_fn=task.collate,
                        num_workers=workers)
    return {"data": str(data_dir), "workers": workers, "bucket": bucket, **drain(loader),
            "feature_dim": task.model_sizes()["feature_dim"]}


def resident_epoch(data_dir: Path, batch_size: int, bucket: bool) -> dict:
    """The same epoch from `--set resident=true`'s copy of the train split (float32, this machine's memory):
    the time to build it, then questions/s of gathering the batches."""
    task = make_task("vqa", data_dir)
    data = task.dataset(("train",))
    began = time.perf_counter()
    resident = ResidentVQA(data, torch.device("cpu"))
    load_seconds = time.perf_counter() - began
    batches = epoch_batches(task, data, batch_size, bucket)
    return {"data": str(data_dir), "workers": "resident", "bucket": bucket, "load_seconds": load_seconds,
            **drain(map(resident.batch, batches)), "feature_dim": task.model_sizes()["feature_dim"]}


def drain(batches: Iterable[dict]) -> dict:
    """Consume the batches: questions, seconds, questions/s, feature MB/s (real boxes), mean padded boxes."""
    questions = feature_bytes = padded_boxes = 0
    began = time.perf_counter()
    for batch in batches:
        questions += batch["features"].shape[0]
        feature_bytes += int(batch["box_mask"].sum()) * batch["features"].shape[2] * 4
        padded_boxes += batch["features"].shape[0] * batch["features"].shape[1]
    seconds = time.perf_counter() - began
    return {"questions": questions, "seconds": seconds, "questions_per_s": questions / seconds,
            "feature_mb_per_s": feature_bytes / seconds / 1e6, "mean_padded_boxes": padded_boxes / questions}


def train_epoch(data_dir: Path, batch_size: int) -> dict:
    """`ban train --preset tiny` for one epoch without validation; its epoch record and the command's wall time."""
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        command = ["ban", "train", "--data", str(data_dir), "--preset", "tiny", "--epochs", "1", "--out",
                   str(run_dir), "--set", f"batch_size={batch_size}", "--set", "val_split="]
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - began
        record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return {"command": " ".join(command[:-1] + [f"{command[-1]!r}"]), "wall_seconds": wall,
            "epoch_seconds": record["seconds"], "samples": record["samples"], "samples_per_s": record["samples_per_s"]}


def paper_best_step(batch_size: int, steps: int, precision: str) -> dict:
    """ms/step of the paper-best training step on synthetic tensors (adaptive boxes) on this machine."""
    settings = BenchSettings(batch_size=batch_size, steps=steps, warmup=1)
    result = measure(settings, "plain", precision, "train")
    return {"batch_size": batch_size, "precision": precision, "ms_per_step": result.ms_per_step,
            "questions_per_s": result.questions_per_s}


def projection(step: dict, loader: dict, vg_questions: int | None) -> dict:
    """Epoch and schedule times when each step waits for its batch (``num_workers=0``: the two add up); with
    ``vg_questions``, also the schedule on train+val+Visual Genome."""
    seconds_per_question = step["ms_per_step"] / 1000 / step["batch_size"] + 1 / loader["questions_per_s"]
    plan = {"loader": loader["data"], "loader_feature_dim": loader["feature_dim"],
            "seconds_per_question": seconds_per_question,
            "vqa2_train_epoch_hours": VQA2_TRAIN_QUESTIONS * seconds_per_question / 3600,
            "paper_schedule_trainval_hours": PAPER_EPOCHS * VQA2_TRAINVAL_QUESTIONS * seconds_per_question / 3600}
    if vg_questions is not None:
        plan["vg_questions"] = vg_questions
        plan["paper_schedule_trainval_vg_hours"] = (PAPER_EPOCHS * (VQA2_TRAINVAL_QUESTIONS + vg_questions)
                                                    * seconds_per_question / 3600)
    return plan


def projection_loader(rows: list[dict]) -> dict:
    """The loader row to project with: the first of the paper's 2,048-d features read without workers and without
    buckets (what the projection assumes: each step waits for its batch, as `ban train` cuts batches by default),
    else the first row."""
    return next((row for row in rows if row["feature_dim"] == PAPER_FEATURE_DIM and row["workers"] == 0
                 and not row["bucket"]), rows[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="prepared VQA dataset dirs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="loader worker counts to measure")
    parser.add_argument("--resident", action="store_true", help="also the epoch from resident=true's copy")
    parser.add_argument("--bucket", action="store_true",
                        help="also every loader epoch with batches grouped by box count (bucket_boxes=true)")
    parser.add_argument("--train-epoch", action="store_true", help="also run one `ban train` epoch (tiny preset)")
    parser.add_argument("--step-batches", type=int, default=3, help="timed paper-best steps (after one warm-up)")
    parser.add_argument("--vg-questions", type=int, help="Visual Genome questions of the schedule (vg-train + vg-val "
                        "of a `ban prepare vqa2 --vg` manifest): also project train+val+VG")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    keep_freed_memory()  # as `ban` does when it starts

    device = resolve_device("auto")
    buckets = (False, True) if args.bucket else (False,)
    results: dict = {"machine": describe_machine(device), "code": code_version(), "command": " ".join(sys.argv),
                     "loader": [loader_epoch(d, args.batch_size, w, b) for d in args.data for w in args.workers
                                for b in buckets]}
    if args.resident:
        results["loader"] += [resident_epoch(d, args.batch_size, b) for d in args.data for b in buckets]
    for row in results["loader"]:
        built = f" (built in {row['load_seconds']:.1f} s)" if "load_seconds" in row else ""
        bucketed = ", box-count buckets" if row["bucket"] else ""
        print(f"loader  {row['data']}  workers {row['workers']}{bucketed}{built}: {row['questions']:,} questions in "
              f"{row['seconds']:.1f} s = {row['questions_per_s']:,.0f} q/s, {row['feature_mb_per_s']:.0f} MB/s of "
              f"{row['feature_dim']}-d features, {row['mean_padded_boxes']:.1f} padded boxes per question")
    if args.train_epoch:
        results["train_epoch"] = train_epoch(args.data[0], args.batch_size)
        row = results["train_epoch"]
        print(f"ban train (tiny), one epoch: {row['epoch_seconds']:.1f} s ({row['samples']:,} questions, "
              f"{row['samples_per_s']:,.0f} q/s); command wall {row['wall_seconds']:.1f} s")
    precision = resolve_precision("auto", device)
    results["paper_best_step"] = paper_best_step(args.batch_size, args.step_batches, precision)
    loader = projection_loader(results["loader"])
    results["projection"] = projection(results["paper_best_step"], loader, args.vg_questions)
    step, plan = results["paper_best_step"], results["projection"]
    print(f"paper-best step, batch {step['batch_size']}, {precision}: {step['ms_per_step']:,.0f} ms "
          f"({step['questions_per_s']:,.1f} q/s)")
    with_vg = " (give --vg-questions for train+val+VG)"
    if args.vg_questions is not None:
        with_vg = (f", on train+val+VG ({args.vg_questions:,} VG questions) "
                   f"{plan['paper_schedule_trainval_vg_hours']:.1f} h")
    print(f"projected with the loader of {loader['data']} ({loader['feature_dim']}-d): one VQA 2.0 train epoch "
          f"{plan['vqa2_train_epoch_hours']:.1f} h, the paper's {PAPER_EPOCHS} epochs on train+val "
          f"{plan['paper_schedule_trainval_hours']:.1f} h{with_vg}")
    print(results["machine"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Padded box slots per question of training batches with and without `bucket_boxes`, and of evaluation batches in
the dataset's and in box-count order (issue 7): no model, only the batches.

    python benchmarks/bucket_padding.py [--data PREPARED_VQA_DIR ...] [--batch-size 256] [--json FILE]

For each prepared dataset's train split, and for 443,757 questions drawn from the adaptive law of `ban bench`
(10–100 boxes, mean ≈ 31, as bottom-up features): one epoch of batches as `ban train` cuts them (seed 1204, epoch
0), shuffled or bucketed, and the batches of an evaluation (`ban evaluate`, validation, `ban predict`) in the
dataset's order and in the box-count order they now take (``ban.engine.evaluation.box_count_batches``): real boxes per
question, padded slots per question (the batch's largest count), the ratio, and the number of distinct padded
shapes N.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ban.benchmark import BenchSettings, box_counts
from ban.engine.distributed import ShardedBatches
from ban.engine.evaluation import box_count_batches
from ban.engine.tasks import make_task

BATCHES = ("training, shuffled", "training, bucketed", "evaluation, dataset order", "evaluation, box-count order")


def batches_of(kind: str, sizes: np.ndarray, batch_size: int) -> list[list[int]]:
    """The batches (sample indices) of one of :data:`BATCHES` for samples of box counts ``sizes`` [S]."""
    if kind.startswith("training"):
        return list(ShardedBatches(len(sizes), batch_size, seed=1204, epoch=0,
                                   sizes=sizes if kind.endswith("bucketed") else None))
    if kind.endswith("dataset order"):
        return [list(range(start, min(start + batch_size, len(sizes)))) for start in range(0, len(sizes), batch_size)]
    return box_count_batches(sizes, batch_size)


def padding(sizes: np.ndarray, batch_size: int, kind: str) -> dict:
    batches = batches_of(kind, sizes, batch_size)
    padded = sum(len(batch) * int(sizes[batch].max()) for batch in batches)
    shapes = {int(sizes[batch].max()) for batch in batches}
    return {"batches": kind, "real_per_question": float(sizes.mean()), "padded_per_question": padded / len(sizes),
            "padded_over_real": padded / float(sizes.sum()), "distinct_shapes": len(shapes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="*", default=[])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    tasks = {str(d): make_task("vqa", d) for d in args.data}
    sources = {name: task.box_counts(task.dataset(["train"])) for name, task in tasks.items()}
    law = box_counts(BenchSettings(batch_size=443_757), torch.Generator().manual_seed(0)).numpy()
    sources["adaptive law of ban bench (10-100, mean ~32)"] = law
    rows = [{"data": name, **padding(np.asarray(sizes), args.batch_size, kind)}
            for name, sizes in sources.items() for kind in BATCHES]
    print("| data | batches | real boxes / q | padded slots / q | padded / real | distinct N |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['data']} | {row['batches']} | {row['real_per_question']:.1f} | "
              f"{row['padded_per_question']:.1f} | {row['padded_over_real']:.2f} | {row['distinct_shapes']} |")
    if args.json:
        args.json.write_text(json.dumps({"batch_size": args.batch_size, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

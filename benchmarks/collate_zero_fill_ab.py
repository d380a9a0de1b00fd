"""A change measured and not kept (session 14): collating VQA batches without zero-filling them first.

    python benchmarks/collate_zero_fill_ab.py --data PREPARED_VQA_DIR [--batches 30]

The first ``--batches`` batches (256 questions) of a training epoch of the prepared set's train split, loaded once,
then collated 5 times each way, alternated: ``zero-filled`` (`ban.data.collate.padded_boxes` as it is: a zeroed
batch tensor, each row's boxes copied in) against ``empty + tails`` (an empty tensor, each row's boxes copied and
only its padding tail zeroed). Prints questions/s collated, median (range).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ban.data import collate
from ban.engine.distributed import ShardedBatches
from ban.engine.tasks import VQATask
from ban.machine import code_version, describe_machine


def empty_and_tails(samples: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``padded_boxes`` written once: rows copied into an empty tensor, only the padding zeroed."""
    counts = torch.tensor([sample[names[0]].shape[0] for sample in samples])
    most = int(counts.max())
    batch = {name: samples[0][name].new_empty((len(samples), most, *samples[0][name].shape[1:])) for name in names}
    for row, (sample, count) in enumerate(zip(samples, counts.tolist(), strict=True)):
        for name in names:
            batch[name][row, :count] = sample[name]
            batch[name][row, count:] = 0
    return {**batch, "box_mask": torch.arange(most)[None, :] < counts[:, None]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    data = VQATask(args.data).dataset(["train"])
    items = [[data[i] for i in batch] for batch in list(ShardedBatches(len(data), 256, 1204, 0))[:args.batches]]
    questions = sum(len(batch) for batch in items)
    variants = {"zero-filled": collate.padded_boxes, "empty + tails": empty_and_tails}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(5):
        for name, padded_boxes in variants.items():
            collate.padded_boxes = padded_boxes  # collate_vqa looks it up at call time
            began = time.perf_counter()
            for samples in items:
                collate.collate_vqa(samples)
            seconds[name].append(time.perf_counter() - began)
    collate.padded_boxes = variants["zero-filled"]
    print(f"{describe_machine()}, {code_version()}; {questions:,} questions of {args.data}, "
          f"D = {data[0]['features'].shape[1]}")
    for name, values in seconds.items():
        print(f"{name:<14} {questions / statistics.median(values):>9,.0f} q/s collated "
              f"(range {questions / max(values):,.0f}–{questions / min(values):,.0f})")


if __name__ == "__main__":
    main()

"""`ban evaluate RUN_DIR`: the official metrics of a trained run on a split of its dataset.

VQA: ``{"overall": %, "perAnswerType": {...}, "perQuestionType": {...}, "trainingScore": %, "upperBound": %}``;
grounding: ``{"recall@1": %, "recall@5": %, "recall@10": %, "upperBound": %, "perType": {...}}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ban.engine.run import load_run
from ban.engine.tasks import make_task
from ban.engine.trainer import resolve_precision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory written by `ban train`")
    parser.add_argument("--split", default="val", help="split of the prepared dataset (default: val)")
    parser.add_argument("--data", type=Path, help="prepared dataset (default: the one the run was trained on; "
                        "must have the same dictionary and answers)")
    parser.add_argument("--checkpoint", choices=["last", "best"], default="last",
                        help="the weights of the last epoch (default) or of the best validation epoch")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, …")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def device_of(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def run(args: argparse.Namespace) -> int:
    loaded = load_run(args.run_dir, args.data, args.checkpoint)
    device = device_of(args.device)
    task = make_task(loaded.config.task, loaded.data_dir)
    precision = resolve_precision(loaded.config.train.precision, device)
    metrics = task.evaluate(loaded.model.to(device), args.split, args.batch_size, device, precision)
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics, args.split))
    return 0


def format_metrics(metrics: dict[str, Any], split: str) -> str:
    """A readable table: top-level numbers, then each per-type breakdown."""
    lines = [f"split {split}"]
    for key, value in metrics.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {name:<24} {number:6.2f}" for name, number in value.items()]
        else:
            lines.append(f"{key:<26} {value:6.2f}")
    return "\n".join(lines)

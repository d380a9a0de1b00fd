"""`ban evaluate RUN_DIR`: the official metrics of a trained run on a split of its dataset.

VQA: ``{"overall": %, "perAnswerType": {...}, "perQuestionType": {...}, "trainingScore": %, "upperBound": %}``;
grounding: ``{"recall@1": %, "recall@5": %, "recall@10": %, "upperBound": %, "count": n, "perType": {...}}``
(each explained in docs/training.md, "Validation numbers"). Under ``torchrun`` the processes share the batches;
the main one prints the same metrics as one process's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ban.commands.score import format_table
from ban.commands.trained_run import (
    add_batch_size_argument,
    add_precision_argument,
    add_run_arguments,
    add_workers_argument,
    forward_precision,
    load_trained_run,
    loader_workers,
)
from ban.engine import distributed
from ban.engine.tasks import make_task


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory written by `ban train`")
    parser.add_argument("--split", default="val", help="split of the prepared dataset (default: val)")
    add_run_arguments(parser)
    add_batch_size_argument(parser)
    add_precision_argument(parser)
    add_workers_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    context = distributed.setup(args.device, "--device")  # under torchrun, each process evaluates a share
    try:
        loaded = distributed.run_together(lambda: load_trained_run(args), context)
        task = make_task(loaded.config.task, loaded.data_dir)
        precision = forward_precision(args, loaded, context.device)
        metrics = task.evaluate(loaded.model.to(context.device), args.split, args.batch_size, context.device,
                                precision, loader_workers(args, loaded), context=context)
    finally:
        distributed.teardown()
    if context.is_main:
        print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics, args.split))
    return 0


OFFICIAL_VQA_KEYS = ("overall", "perAnswerType", "perQuestionType")


def format_metrics(metrics: dict[str, Any], split: str) -> str:
    """A readable table. VQA: the official scores as `ban score` prints them, then ban's other numbers; grounding:
    top-level numbers, then each per-type breakdown (a row of named numbers per type)."""
    lines = [f"split {split}"]
    if all(key in metrics for key in OFFICIAL_VQA_KEYS):
        lines += [format_table(metrics), ""]
        metrics = {key: value for key, value in metrics.items() if key not in OFFICIAL_VQA_KEYS}
    for key, value in metrics.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {name:<24} {_cell(number)}" for name, number in value.items()]
        else:
            lines.append(f"{key:<26} {_cell(value)}")
    return "\n".join(lines)


def _cell(value: float | int | dict[str, float | int]) -> str:
    """A percentage with two decimals, a count as an integer, a dict as ``name value`` pairs."""
    if isinstance(value, dict):
        return "  ".join(f"{name} {_cell(number)}" for name, number in value.items())
    return f"{value:6d}" if isinstance(value, int) else f"{value:6.2f}"

"""`ban predict RUN_DIR --split test --out results.json`: answers in the evaluation server's format.

Writes a JSON list of ``{"question_id": int, "answer": str}`` (atomically), and with ``--logits FILE.npy`` the
raw answer logits ``[Q, A]`` float32, rows in the same order as the results.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from ban.commands.trained_run import (
    add_batch_size_argument,
    add_precision_argument,
    add_run_arguments,
    add_workers_argument,
    forward_precision,
    load_trained_run,
    loader_workers,
)
from ban.data.atomic import atomic_path, check_file_target, write_with
from ban.engine.tasks import VQATask, make_task, predict_logits
from ban.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a VQA run directory written by `ban train`")
    parser.add_argument("--split", default="test-dev",
                        help="split of the prepared dataset (default: test-dev); EvalAI's VQA 2.0 phases, test-dev "
                             "included, take answers to every test2015 question: --split test")
    parser.add_argument("--out", type=Path, required=True, help="results file to write (JSON)")
    parser.add_argument("--logits", type=Path, help="also write the answer logits [Q, A] as a .npy file")
    add_run_arguments(parser)
    add_batch_size_argument(parser)
    add_precision_argument(parser)
    add_workers_argument(parser)


def run(args: argparse.Namespace) -> int:
    for target in filter(None, (args.out, args.logits)):
        check_file_target(target)  # refused now, not after predicting
    if args.logits is not None and args.logits.resolve() == args.out.resolve():
        raise ConfigError(f"--out and --logits name the same file, {args.out}: the results would overwrite the logits")
    loaded, device = load_trained_run(args)
    task = make_task(loaded.config.task, loaded.data_dir)
    if not isinstance(task, VQATask):
        raise ConfigError("ban predict writes VQA answers; for grounding use `ban evaluate`")
    precision = forward_precision(args, loaded, device)
    labels = task.answers()
    dataset = task.dataset([args.split])
    results: list[dict[str, object]] = [{} for _ in range(len(dataset))]  # in the dataset's order
    with atomic_path(args.logits) if args.logits else nullcontext() as logits_path:
        table = (np.lib.format.open_memmap(logits_path, mode="w+", dtype=np.float32,
                                           shape=(len(dataset), len(labels))) if logits_path else None)
        for indices, batch, logits in predict_logits(task, loaded.model.to(device), dataset, args.batch_size,
                                                     device, precision, progress=f"predicting {args.split}",
                                                     num_workers=loader_workers(args, loaded)):
            if table is not None:
                table[indices] = logits.cpu().numpy()
            best = logits.argmax(dim=1).tolist()
            for index, q, i in zip(indices, batch["question_ids"].tolist(), best, strict=True):
                results[index] = {"question_id": q, "answer": labels[i]}
        if table is not None:
            table.flush()
            del table
    write_with(args.out, lambda temp: temp.write_text(json.dumps(results), encoding="utf-8"))
    print(f"wrote {len(results)} answers to {args.out}" + (f" and logits to {args.logits}" if args.logits else ""))
    if args.split == "test-dev" and "test" in task.splits():
        print("note: these answer test-dev's questions only; EvalAI's VQA 2.0 phases, test-dev included, take "
              "answers to every test2015 question: `--split test` writes them", file=sys.stderr)
    return 0

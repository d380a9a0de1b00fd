"""`ban predict RUN_DIR --split test --out results.json`: answers in the evaluation server's format.

Writes a JSON list of ``{"question_id": int, "answer": str}`` (atomically), and with ``--logits FILE.npy`` the
raw answer logits ``[Q, A]`` float32, rows in the same order as the results. Under ``torchrun`` the processes
share the work; the files are the same as one process's.
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
from ban.engine import distributed
from ban.engine.distributed import DistContext
from ban.engine.run import LoadedRun
from ban.engine.tasks import VQATask, make_task, predict_logits
from ban.errors import ConfigError, DataError


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
    context = distributed.setup(args.device, "--device")  # under torchrun, each process predicts a share
    try:
        loaded = load_trained_run(args)
        task = make_task(loaded.config.task, loaded.data_dir)
        if not isinstance(task, VQATask):
            raise ConfigError("ban predict writes VQA answers; for grounding use `ban evaluate`")
        predict(args, loaded, task, context)
    finally:
        distributed.teardown()
    return 0


def predict(args: argparse.Namespace, loaded: LoadedRun, task: VQATask, context: DistContext) -> None:
    """Write the answers (and logits) of ``args.split``: under torchrun each process predicts every K-th batch
    (K processes) and writes its rows of the logits into the main process's file; the main one writes the
    answers. The files are the same as one process's."""
    precision = forward_precision(args, loaded, context.device)
    labels = task.answers()
    dataset = task.dataset([args.split])
    chosen: list[tuple[int, int, int]] = []  # (dataset index, question id, answer label) of this process's rows
    problem = None
    with atomic_path(args.logits) if args.logits and context.is_main else nullcontext() as logits_path:
        try:
            table = (logits_table(args.logits, logits_path, (len(dataset), len(labels)), context)
                     if args.logits else None)
            for indices, batch, logits in predict_logits(task, loaded.model.to(context.device), dataset,
                                                         args.batch_size, context.device, precision,
                                                         progress=f"predicting {args.split}",
                                                         num_workers=loader_workers(args, loaded),
                                                         shard=(context.rank, context.world_size)):
                if table is not None:
                    table[indices] = logits.cpu().numpy()
                chosen += zip(indices, batch["question_ids"].tolist(), logits.argmax(dim=1).tolist(), strict=True)
            if table is not None:
                table.flush()
                del table
        except DataError as error:
            problem = error
        parts = distributed.gather_or_raise(chosen, problem, context)  # every row written, or an error everywhere
    if not context.is_main:
        return
    results: list[dict[str, object]] = [{} for _ in range(len(dataset))]  # in the dataset's order
    for index, question_id, label in (row for part in parts for row in part):
        results[index] = {"question_id": question_id, "answer": labels[label]}
    write_with(args.out, lambda temp: temp.write_text(json.dumps(results), encoding="utf-8"))
    print(f"wrote {len(results)} answers to {args.out}" + (f" and logits to {args.logits}" if args.logits else ""))
    if args.split == "test-dev" and "test" in task.splits():
        print("note: these answer test-dev's questions only; EvalAI's VQA 2.0 phases, test-dev included, take "
              "answers to every test2015 question: `--split test` writes them", file=sys.stderr)


def logits_table(target: Path, temp: Path | None, shape: tuple[int, int], context: DistContext) -> np.memmap:
    """The float32 ``[Q, A]`` .npy file the logits are written into, memory-mapped: made by the main process at
    ``temp`` (where :func:`atomic_path` has it written before it becomes ``target``), opened by the others."""
    if context.is_main:
        table = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=shape)
    shared = distributed.gather_objects(temp, context)[0]  # made before any other process opens it
    if context.is_main:
        return table
    try:
        return np.load(shared, mmap_mode="r+")
    except OSError as error:
        raise DataError(f"process {context.rank} cannot open the file being written ({error.strerror}): under "
                        "torchrun, --logits must name a file that every process sees", path=target) from error

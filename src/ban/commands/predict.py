"""`ban predict RUN_DIR --split test --out results.json`: answers in the evaluation server's format.

Writes a JSON list of ``{"question_id": int, "answer": str}`` (atomically), and with ``--logits FILE.npy`` the
raw answer logits ``[Q, A]`` float32, rows in the same order as the results. Under ``torchrun`` the processes
share the work; the files are the same as one process's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ban import launch
from ban.commands.trained_run import (
    add_batch_size_argument,
    add_precision_argument,
    add_run_arguments,
    add_workers_argument,
    forward_precision,
    load_trained_run,
    loader_workers,
)
from ban.data.atomic import atomic_path, check_file_target, make_directory, unwritable, write_file
from ban.engine import distributed
from ban.engine.distributed import DistContext
from ban.engine.evaluation import predict_logits
from ban.engine.run import LoadedRun, check_not_run_output, read_run_config
from ban.engine.tasks import VQATask, make_task
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
    context = distributed.setup(args.device, "--device")  # under torchrun, each process predicts a share
    try:
        loaded, task, dataset = distributed.run_together(lambda: open_prediction(args), context)
        predict(args, loaded, task, dataset, context)
    finally:
        distributed.teardown()
    return 0


def open_prediction(args: argparse.Namespace) -> tuple[LoadedRun, VQATask, Dataset]:
    """What is checked before predicting (refused now, not after it): the files to write (not the run's or its
    dataset's own; their folders made), then the run, its task and the split to answer (opened)."""
    data_dir = args.data if args.data is not None else read_run_config(args.run_dir).data_dir
    for option, target in (("--out", args.out), ("--logits", args.logits)):
        if target is None:
            continue
        check_file_target(target)
        check_not_run_output(target, args.run_dir, data_dir, option)
        try:
            make_directory(target.parent)
        except OSError as error:
            raise unwritable(target, error) from error
    if args.logits is not None and args.logits.resolve() == args.out.resolve():
        raise ConfigError(f"--out and --logits name the same file, {args.out}: the results would overwrite the logits")
    if args.logits is not None and launch.spans_machines():
        raise ConfigError("--logits under a torchrun of several machines: the processes write into one memory-mapped "
                          "file, which only one machine's processes can share; predict on one machine")
    loaded = load_trained_run(args)
    task = make_task(loaded.config.task, loaded.data_dir)
    if not isinstance(task, VQATask):
        raise ConfigError("ban predict writes VQA answers; for grounding use `ban evaluate`")
    return loaded, task, task.dataset([args.split])


def predict(args: argparse.Namespace, loaded: LoadedRun, task: VQATask, dataset: Dataset,
            context: DistContext) -> None:
    """Write the answers (and logits) of ``dataset`` (the split ``args.split``): under torchrun each process
    predicts every K-th batch (K processes) and writes its rows of the logits into the main process's file; the
    main one writes the answers. The files are the same as one process's. The logits replace an earlier file only
    once the answers are written: a failure keeps both earlier files."""
    precision = forward_precision(args, loaded, context.device)
    labels = task.answers()
    chosen: list[tuple[int, int, int]] = []  # (dataset index, question id, answer label) of this process's rows
    problem = None
    with atomic_path(args.logits) if args.logits and context.is_main else nullcontext() as logits_path:
        table = logits_table(args.logits, logits_path, (len(dataset), len(labels)), context) if args.logits else None
        try:
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
        except DataError as error:
            problem = error
        del table
        parts = distributed.gather_or_raise(chosen, problem, context)  # every row written, or an error everywhere
        if not context.is_main:
            return
        results: list[dict[str, object]] = [{} for _ in range(len(dataset))]  # in the dataset's order
        for index, question_id, label in (row for part in parts for row in part):
            results[index] = {"question_id": question_id, "answer": labels[label]}
        try:
            write_file(args.out, json.dumps(results))
        except OSError as error:
            raise unwritable(args.out, error) from error
    print(f"wrote {len(results)} answers to {args.out}" + (f" and logits to {args.logits}" if args.logits else ""))
    if args.split == "test-dev" and "test" in task.splits():
        print("note: these answer test-dev's questions only; EvalAI's VQA 2.0 phases, test-dev included, take "
              "answers to every test2015 question: `--split test` writes them", file=sys.stderr)


def logits_table(target: Path, temp: Path | None, shape: tuple[int, int], context: DistContext) -> np.memmap:
    """The float32 ``[Q, A]`` .npy file the logits are written into, memory-mapped: made by the main process at
    ``temp`` (where :func:`atomic_path` has it written before it becomes ``target``) with its disk space
    reserved, then opened by the others. A failure of either is raised in every process before any predicting."""
    table, problem = None, None
    if context.is_main:
        try:
            table = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=shape)
            reserve_space(temp)
        except OSError as error:
            problem = unwritable(target, error)
    made = distributed.gather_or_raise(temp, problem, context)[0]  # made before any other process opens it
    if not context.is_main:
        try:
            table = np.load(made, mmap_mode="r+")
        except OSError as error:
            problem = DataError(f"process {context.rank} cannot open the file being written ({error.strerror})",
                                path=target)
    distributed.gather_or_raise(None, problem, context)
    return table


def reserve_space(path: Path) -> None:
    """Allocate the blocks of the file ``path`` now, where the system can (``posix_fallocate``): a disk too full
    for it fails here (ENOSPC), not with SIGBUS when a memory-mapped page of it is first written."""
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as file:
            os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size)

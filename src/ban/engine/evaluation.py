"""The evaluation loop every task shares: batches in box-count order (so a batch pads little), shared across the
processes of a ``torchrun`` launch, run through the model without gradients, with non-finite outputs named by the
sample they came from. :class:`ban.engine.tasks.Task` turns what it yields into each task's metrics; ``ban
predict`` writes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset

from ban.engine.precision import autocast
from ban.errors import DataError

if TYPE_CHECKING:
    from ban.engine.tasks import Task

Batch = dict[str, Tensor]
Shard = tuple[int, int]  # (this process's rank, number of processes): which evaluation batches a process takes
WHOLE: Shard = (0, 1)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of ``batch`` to ``device``."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


class EvaluationStopped(Exception):
    """An evaluation given up at a stop request (:func:`predict_logits`'s ``stop``)."""


def non_finite_output(data_dir: Path, record: str) -> DataError:
    """The error for a model output that is NaN or infinite for the sample ``record`` of the prepared dataset
    ``data_dir``: the weights are checked when loaded, so the sample's image features are the likely cause."""
    return DataError("the model's output is NaN or infinite: its image's region features or box corners most likely "
                     "hold non-finite values (`ban prepare` refuses them; a store changed since is not checked "
                     "again)", path=data_dir, record=record, field="features")


def check_finite_rows(task: Task, dataset: Dataset, order: list[list[int]], finite: list[Tensor]) -> None:
    """Raise :func:`non_finite_output` for the first sample whose ``finite`` flag is False: ``finite[k]`` [B_k]
    bool, one per row of the batch of ``dataset`` indices ``order[k]``; read from the device once."""
    flags = torch.cat(finite) if finite else torch.ones(0, dtype=torch.bool)
    if not bool(flags.all()):
        indices = [index for batch in order for index in batch]
        raise non_finite_output(task.data_dir, task.sample_record(dataset, indices[int((~flags).nonzero()[0, 0])]))


def dataset_box_counts(dataset: Dataset) -> np.ndarray:
    """Each sample's box count ``[len(dataset)]`` int64 of a split's dataset (VQA or grounding: its
    ``box_counts()``, read from the feature store's index, no features) or a ConcatDataset of them."""
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    return np.concatenate([part.box_counts() for part in parts])


def evaluation_batches(dataset: Dataset, batch_size: int) -> list[list[int]]:
    """The dataset indices of each evaluation batch of ``dataset``: :func:`box_count_batches` of its box counts."""
    return box_count_batches(dataset_box_counts(dataset), batch_size)


def box_count_batches(counts: np.ndarray, batch_size: int) -> list[list[int]]:
    """The sample indices ``0 … len(counts) − 1`` stably sorted by ``counts`` [S] (each sample's box count) and cut
    into batches of ``batch_size``: a batch pads to a box count close to its samples' own. Equal counts keep
    their order, so a dataset of one box count (fixed 36) is batched in order."""
    order = np.argsort(counts, kind="stable").tolist()
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def sharded_batches(dataset: Dataset, batch_size: int, shard: Shard) -> list[list[int]]:
    """``shard`` = (rank, processes)'s :func:`evaluation_batches` of ``dataset``: every ``processes``-th from the
    ``rank``-th, so that each process gets batches of every box count (about the same work)."""
    rank, processes = shard
    return evaluation_batches(dataset, batch_size)[rank::processes]


def predict_logits(task: Task, model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                   precision: str, progress: str | None = None, num_workers: int = 0,
                   stop: list[bool] | None = None, resident: Any = None,
                   shard: Shard = WHOLE) -> Iterator[tuple[list[int], Batch, Tensor]]:
    """(dataset indices of the batch's rows [B], batch, float32 logits [B, …] as ``task.forward`` gives them) for
    every batch of :meth:`Task.loader` (of ``shard``: all by default) — in box-count order, not the dataset's:
    the indices put each row back in place — loaded by ``num_workers`` worker processes (0: in this one), or the
    same batches gathered on the device from ``resident`` (:meth:`Task.resident` of ``dataset``: no loader). The
    model runs in eval mode, under ``torch.inference_mode`` (the batch and logits are inference tensors: no
    autograd can use them). ``progress`` labels a progress bar (the first shard's process shows it). Once
    ``stop[0]`` is set, the next batch raises :class:`EvaluationStopped` instead. Logits that are NaN or infinite
    raise :func:`non_finite_output` naming the sample after the last batch (their finiteness is kept on the device
    and read once, so the host never waits for the device batch by batch): a caller must write nothing before the
    loop ends."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    if resident is None:
        loader = task.loader(dataset, batch_size, num_workers, pin_memory=device.type == "cuda", shard=shard)
        order, batches = loader.batch_sampler, loader
    else:
        order = sharded_batches(dataset, batch_size, shard)
        batches = map(resident.batch, order)
    finite: list[Tensor] = []  # per batch: its rows' logits are all finite [B], on the device
    try:
        with torch.inference_mode():
            for indices, batch in zip(order, tqdm(batches, total=len(order), desc=progress,
                                                  disable=progress is None or shard[0] > 0, leave=False),
                                      strict=True):
                if stop is not None and stop[0]:
                    raise EvaluationStopped
                batch = to_device(batch, device)
                with autocast(device, precision):
                    logits = task.forward(model, batch).float()
                finite.append(logits.flatten(1).isfinite().all(1))
                yield indices, batch, logits
            check_finite_rows(task, dataset, order, finite)
    finally:
        model.train(was_training)

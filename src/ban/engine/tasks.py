"""What differs between VQA and grounding for the engine: datasets, forward call, loss, scores, evaluation.

A task object binds a prepared dataset directory. The trainer, ``ban evaluate`` and ``ban predict`` only talk to
this interface, so the loop itself is task-agnostic; the evaluation loop the tasks share is
:mod:`ban.engine.evaluation`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset

from ban.data.glove import load_word_vectors
from ban.data.loader import BatchLoader
from ban.data.prepared import (
    GLOVE,
    GLOVE_COOCCURRENCE,
    MANIFEST,
    check_split,
    manifest_size,
    read_answers,
    read_manifest,
    read_tokens,
    split_flag,
)
from ban.engine import distributed
from ban.engine.config import TrainConfig
from ban.engine.distributed import DistContext
from ban.engine.evaluation import (
    WHOLE,
    Batch,
    EvaluationStopped,
    Shard,
    dataset_box_counts,
    predict_logits,
    sharded_batches,
)
from ban.engine.loss import grounding_loss, vqa_loss
from ban.errors import ConfigError, DataError


class Task:
    """Base of the two tasks; subclasses fill in the data and the math."""

    name = ""
    manifest_task = ""  # the "task" a prepared dataset of this kind has in its manifest

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir, self.manifest_task)

    def splits(self) -> list[str]:
        """Splits the prepared dataset holds."""
        return list(self.manifest["splits"])

    def splits_with_targets(self) -> list[str]:
        """Splits whose samples carry training targets (every split, unless the task says otherwise)."""
        return self.splits()

    def scored_splits(self) -> list[str]:
        """Splits :meth:`evaluate` can score (every split, unless the task says otherwise)."""
        return self.splits()

    def dataset(self, splits: Iterable[str]) -> Dataset:
        """The samples of one or more splits (concatenated in order); :class:`DataError` for a split the dataset
        does not have."""
        splits = list(splits)
        for split in splits:
            check_split(self.data_dir, self.manifest, split)
        parts = [self.open_split(split) for split in splits]
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def loader(self, dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False,
               shard: Shard = WHOLE) -> BatchLoader:
        """Batches of ``dataset`` for evaluation and prediction, :func:`ban.engine.evaluation.evaluation_batches`
        (less padding than the dataset's order) — of ``shard`` = (rank, processes), every ``processes``-th from the
        ``rank``-th; ``loader.batch_sampler`` lists each batch's dataset indices. ``num_workers`` loader processes
        (0: this one); ``pin_memory`` for a CUDA device. The loader has its own generator: an evaluation draws
        nothing from torch's global one, so a training run's random stream (its dropout masks) is the same whether
        and however it validates."""
        return BatchLoader(dataset, batch_sampler=sharded_batches(dataset, batch_size, shard),
                           collate_fn=self.collate, num_workers=num_workers, pin_memory=pin_memory,
                           generator=torch.Generator())

    def model_sizes(self) -> dict[str, int]:
        """Model config fields fixed by the data (vocabulary, answers, feature width)."""
        raise NotImplementedError

    def word_vectors(self, width: int, two_tables: bool) -> tuple[Tensor, Tensor | None] | None:
        """GloVe initialisation of the word tables (glove.npy, glove_cooccurrence.npy); None when the dataset has
        none or when its vectors are not ``width``-d (a warning on stderr says so): the tables keep their random
        initialisation. Raises :class:`DataError` naming the file for one that is not a finite float table with a
        row per token of dictionary.json, or a second table of another width than glove.npy."""
        tokens = read_tokens(self.data_dir)
        path = self.data_dir / GLOVE
        table = load_word_vectors(path, tokens)
        if table is None:
            return None
        if table.shape[1] != width:
            print(f"ban: warning: {path} holds {table.shape[1]}-d word vectors but the model's word tables are "
                  f"{width}-d (model.word_dim): they start random instead. Train with --set model.word_dim="
                  f"{table.shape[1]}, or prepare the dataset with {width}-d GloVe vectors.", file=sys.stderr)
            return None
        second_path = self.data_dir / GLOVE_COOCCURRENCE
        second = load_word_vectors(second_path, tokens) if two_tables else None
        if second is not None and second.shape[1] != width:
            raise DataError(f"{second.shape[1]}-d vectors, but glove.npy's are {width}-d: prepare the dataset again",
                            path=second_path)
        return torch.from_numpy(table), None if second is None else torch.from_numpy(second)

    def open_split(self, split: str) -> Dataset:
        raise NotImplementedError

    def resident(self, dataset: Dataset, device: torch.device, precision: str, progress: bool) -> Any:
        """``dataset`` held on ``device``, with a ``batch(indices)`` method (the ``resident`` training setting)."""
        raise ConfigError(f"resident=true is implemented for VQA only; {self.name} trains from its data loader")

    def box_counts(self, dataset: Dataset) -> np.ndarray:
        """Each sample's box count ``[len(dataset)]`` (the ``bucket_boxes`` training setting)."""
        return dataset_box_counts(dataset)

    collate: Callable[[list[Any]], Batch]

    def outputs(self, model: nn.Module, batch: Batch) -> Any:
        """The model's output for ``batch`` (:mod:`ban.models.outputs`: logits, and attention maps for VQA)."""
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        """The model's logits for ``batch`` (VQA: [B, A]; grounding: [B, G, N, E])."""
        return self.outputs(model, batch).logits

    def loss_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        """The training loss summed over the samples of ``batch`` → [] (the trainer normalises it); ``logits`` as
        :meth:`forward` gives them."""
        raise NotImplementedError

    def selection_score(self, metrics: dict[str, Any]) -> float:
        """The validation number that picks the best epoch (VQA: overall accuracy; grounding: recall@1)."""
        raise NotImplementedError

    def score_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        """The training-time score summed over the scored units of ``batch`` → [] (VQA: the soft target of the
        arg-max answer, per question; grounding: 1 for an entity with a ground-truth box whose top-scored box is a
        positive, as the reference counts it)."""
        raise NotImplementedError

    def score_count(self, batch: Batch) -> Tensor:
        """How many units :meth:`score_sum` scored in ``batch`` → [] (the training score is their mean): the
        samples, unless the task says otherwise."""
        return batch["features"].new_full((), float(self.batch_size(batch)), dtype=torch.float32)  # bf16 rounds counts

    def batch_size(self, batch: Batch) -> int:
        return int(batch["features"].shape[0])

    def sample_record(self, dataset: Dataset, index: int) -> str:
        """How an error names sample ``index`` of ``dataset`` (one of its splits)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str, batch_size: int, device: torch.device,
                 precision: str, num_workers: int = 0, stop: list[bool] | None = None,
                 resident: Any = None, context: DistContext | None = None) -> dict[str, Any] | None:
        """The official metrics of ``model`` on ``split``, its batches loaded by ``num_workers`` worker processes
        (0: in this one) or gathered from ``resident`` (:meth:`resident` of the split); :class:`EvaluationStopped`
        once ``stop[0]`` is set (a training run's stop request). A split that cannot be scored fails first, before
        the predictions (:meth:`confirm_scorable`).

        Under ``torchrun`` (``context`` of K processes, every one calling this) each process evaluates every K-th
        batch (:func:`sharded_batches`) and the main one scores them all: the same metrics as one process's,
        returned by the main process (the others get None). A :class:`DataError` or a stop request in any process
        is raised in every process (:func:`ban.engine.distributed.gather_or_raise`)."""
        context = context or DistContext(0, 1, device)
        self.confirm_scorable(split, context)
        part, problem = None, None
        try:
            part = self.evaluation_part(model, split, batch_size, device, precision, num_workers, stop, resident,
                                        shard=(context.rank, context.world_size))
        except EvaluationStopped:
            pass
        except DataError as error:
            problem = error
        # a process stopped (or signalled once done with its part) stops them all
        parts = distributed.gather_or_raise((part, bool(stop and stop[0])), problem, context)
        if any(stopped for _, stopped in parts):
            raise EvaluationStopped
        return distributed.run_together(
            lambda: self.metrics(split, [part for part, _ in parts]) if context.is_main else None, context)

    def confirm_scorable(self, split: str, context: DistContext) -> None:
        """:meth:`check_scorable` in the main process of ``context`` (the one that scores), its error raised in
        every process."""
        distributed.run_together(lambda: self.check_scorable(split) if context.is_main else None, context)

    def evaluation_part(self, model: nn.Module, split: str, batch_size: int, device: torch.device,
                        precision: str, num_workers: int = 0, stop: list[bool] | None = None,
                        resident: Any = None, shard: Shard = WHOLE) -> Any:
        """What :meth:`metrics` needs from ``shard``'s batches of ``split`` (:meth:`loader`), as a picklable value
        (the processes of a run exchange it); the arguments as for :meth:`evaluate`."""
        raise NotImplementedError

    def metrics(self, split: str, parts: list[Any]) -> dict[str, Any]:
        """The official metrics of ``split`` from the :meth:`evaluation_part` of every shard, in any order."""
        raise NotImplementedError

    def check_scorable(self, split: str) -> None:
        """Raise the :class:`DataError` that :meth:`metrics` would raise only after a whole evaluation of ``split``
        for want of something to score against (a training run asks before its first epoch)."""
        raise NotImplementedError


def vqa_outputs(model: nn.Module, batch: Batch) -> Any:
    """A VQA model's output for a batch of :func:`ban.data.collate.collate_vqa` (features [B, N, Dv], boxes
    [B, N, 6], questions [B, L], box_mask [B, N] when given) and, for a packing model, the host-made ``rows``
    of :func:`ban.engine.graphs.static_batch`."""
    packing = {"real_rows": batch["rows"]} if "rows" in batch else {}  # made on the host: static_batch()
    return model(batch["features"], batch["boxes"], batch["questions"], box_mask=batch.get("box_mask"), **packing)


def grounding_outputs(model: nn.Module, batch: Batch) -> Any:
    """A grounding model's output for a batch of :func:`ban.data.collate.collate_grounding`."""
    return model(batch["features"], batch["boxes"], batch["tokens"], batch["entity_positions"],
                 box_mask=batch["box_mask"], entity_mask=batch["entity_mask"])


class VQATask(Task):
    """VQA 2.0 (or the synthetic scenes in its format): soft-target BCE, official accuracy on evaluation."""

    name = "vqa"
    manifest_task = "vqa2"

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(data_dir)
        from ban.data.collate import collate_vqa

        self.collate = collate_vqa
        self._annotations: dict[str, list[dict[str, Any]]] = {}
        self._store: Any = None

    def answers(self) -> list[str]:
        """The candidate answers in label order (answers.json)."""
        return read_answers(self.data_dir)

    def splits_with_targets(self) -> list[str]:
        """The annotated splits: VQA 2.0's train and val, Visual Genome QA (test splits have zero targets)."""
        return [split for split in self.manifest["splits"] if split_flag(self.data_dir, self.manifest, split,
                                                                         "annotated")]

    def scored_splits(self) -> list[str]:
        """The splits with official annotation records: annotated and from VQA 2.0's official files."""
        return [split for split in self.splits_with_targets()
                if split_flag(self.data_dir, self.manifest, split, "official_files", default=False)]

    def model_sizes(self) -> dict[str, int]:
        return {"num_tokens": len(read_tokens(self.data_dir)), "num_answers": len(self.answers()),
                "feature_dim": manifest_size(self.data_dir, self.manifest, "feature_dim")}

    def open_split(self, split: str) -> Dataset:
        from ban.data.prepared import open_features
        from ban.data.vqa_dataset import VQADataset

        if self._store is None:  # one open feature store shared by all splits
            self._store = open_features(self.data_dir)
        return VQADataset(self.data_dir, split, features=self._store)

    def resident(self, dataset: Dataset, device: torch.device, precision: str, progress: bool) -> Any:
        """A :class:`ban.data.resident.ResidentVQA`; features in bf16 when training in bf16 (every product that
        reads them casts them to bf16 anyway), else float32."""
        from ban.data.resident import ResidentVQA

        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        return ResidentVQA(dataset, device, dtype, progress=progress)

    def outputs(self, model: nn.Module, batch: Batch) -> Any:
        return vqa_outputs(model, batch)

    def sample_record(self, dataset: Dataset, index: int) -> str:
        return f"question_id={int(dataset[index]['question_id'])}"

    def loss_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        return vqa_loss(logits, batch["targets"], 1)

    def selection_score(self, metrics: dict[str, Any]) -> float:
        return float(metrics["overall"])

    def score_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        return batch["targets"].gather(1, logits.argmax(dim=1, keepdim=True)).sum()

    def annotations_path(self, split: str) -> Path:
        return self.data_dir / f"{split}_annotations.json"

    def annotations(self, split: str) -> list[dict[str, Any]]:
        """The official annotation records of ``split`` (read once)."""
        from ban.data.vqa_json import load_annotations

        if split not in self._annotations:
            check_split(self.data_dir, self.manifest, split)
            path = self.annotations_path(split)
            if split in self.splits_with_targets() and split not in self.scored_splits():
                raise DataError(f"split {split!r} has training targets but no official annotations to score against "
                                f"(splits that can be scored: {', '.join(self.scored_splits())})", path=path)
            if not path.is_file():
                raise DataError(f"split {split!r} has no annotations to score against (test splits have none: "
                                "`ban predict` writes their answers for the evaluation server)", path=path)
            self._annotations[split] = load_annotations(path)
        return self._annotations[split]

    def evaluation_part(self, model: nn.Module, split: str, batch_size: int, device: torch.device,
                        precision: str, num_workers: int = 0, stop: list[bool] | None = None,
                        resident: Any = None, shard: Shard = WHOLE) -> dict[str, Any]:
        """``{"question_ids": [Q], "labels": [Q] arg-max answers, "sums": [sum of their soft targets, sum of the
        best soft targets]}`` over the questions of ``shard``'s batches."""
        # kept on the device and read once at the end (no host sync per batch); the sums of float32 targets in
        # float64 are exact, so the same for any batch order and any sharding
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        chosen = [torch.empty(2, 0, dtype=torch.int64, device=device)]  # per batch: question ids, answer labels
        for _, batch, logits in predict_logits(self, model, self.dataset([split]), batch_size, device, precision,
                                               progress=f"evaluating {split}", num_workers=num_workers, stop=stop,
                                               resident=resident, shard=shard):
            best = logits.argmax(dim=1)
            targets = batch["targets"].float()
            sums += torch.stack([targets.gather(1, best[:, None]).sum(dtype=torch.float64),
                                 targets.max(dim=1).values.sum(dtype=torch.float64)])
            chosen.append(torch.stack([batch["question_ids"], best]))
        question_ids, labels = torch.cat(chosen, dim=1).tolist()
        return {"question_ids": question_ids, "labels": labels, "sums": sums.tolist()}

    def metrics(self, split: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """Official accuracy (overall, perAnswerType, perQuestionType) plus ``trainingScore`` (mean soft target
        of the arg-max answer) and ``upperBound`` (mean best soft target), all in %."""
        from ban.metrics.vqa import vqa_accuracy

        answers = self.answers()
        predictions = {question_id: answers[label] for part in parts
                       for question_id, label in zip(part["question_ids"], part["labels"], strict=True)}
        result = vqa_accuracy(self.annotations(split), predictions, path=self.annotations_path(split))
        scored, upper = (sum(part["sums"][i] for part in parts) for i in range(2))
        result["trainingScore"] = 100 * scored / len(predictions)
        result["upperBound"] = 100 * upper / len(predictions)
        return result

    def check_scorable(self, split: str) -> None:
        """Its annotations, read (and kept for :meth:`metrics`)."""
        self.annotations(split)


class GroundingTask(Task):
    """Flickr30k Entities phrase grounding: BCE over boxes × entities, Recall@K on evaluation."""

    name = "grounding"
    manifest_task = "grounding"

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(data_dir)
        from ban.data.collate import collate_grounding

        self.collate = collate_grounding

    def model_sizes(self) -> dict[str, int]:
        return {"num_tokens": len(read_tokens(self.data_dir)),
                "feature_dim": manifest_size(self.data_dir, self.manifest, "feature_dim")}

    def open_split(self, split: str) -> Dataset:
        from ban.data.flickr30k import GroundingDataset

        return GroundingDataset(self.data_dir, split)

    def outputs(self, model: nn.Module, batch: Batch) -> Any:
        return grounding_outputs(model, batch)

    def sample_record(self, dataset: Dataset, index: int) -> str:
        return f"sentence {index} (image_id={int(dataset[index]['image_id'])})"

    def loss_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        # entities without a ground-truth box take no part in the loss, as in the reference
        return grounding_loss(logits, batch["targets"], self._scored(batch))

    def selection_score(self, metrics: dict[str, Any]) -> float:
        return float(metrics["recall@1"])

    def score_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        """The entities with ground truth whose top box is a positive."""
        top = logits[:, 0].argmax(dim=1, keepdim=True)  # [B, 1, E]
        hit = batch["targets"].gather(1, top)[:, 0].gt(0)  # [B, E]
        return (hit & self._scored(batch)).sum().float()

    def score_count(self, batch: Batch) -> Tensor:
        """The entities with a ground-truth box (those the training score counts)."""
        return self._scored(batch).sum().float()

    @staticmethod
    def _scored(batch: Batch) -> Tensor:
        return batch["entity_mask"] & batch["has_ground_truth"]  # [B, E]

    def evaluation_part(self, model: nn.Module, split: str, batch_size: int, device: torch.device,
                        precision: str, num_workers: int = 0, stop: list[bool] | None = None,
                        resident: Any = None, shard: Shard = WHOLE) -> Any:
        """A :class:`ban.metrics.grounding.GroundingRecall` of ``shard``'s batches."""
        from ban.metrics.grounding import GroundingRecall

        metric = GroundingRecall()
        for _, batch, logits in predict_logits(self, model, self.dataset([split]), batch_size, device, precision,
                                               progress=f"evaluating {split}", num_workers=num_workers, stop=stop,
                                               resident=resident, shard=shard):
            metric.update(logits[:, 0], batch["targets"], batch["entity_mask"], batch["has_ground_truth"],
                          batch["entity_types"], batch["box_mask"])
        return metric

    def metrics(self, split: str, parts: list[Any]) -> dict[str, Any]:
        """Recall@1/5/10, upper bound and per-type breakdown, in % (``ban.metrics.grounding``)."""
        from ban.metrics.grounding import GroundingRecall

        metric = GroundingRecall()
        for part in parts:
            metric.add(part)
        if metric.count == 0:
            raise self._nothing_to_score(split)
        return metric.compute()

    def check_scorable(self, split: str) -> None:
        """At least one entity of the split with a ground-truth box."""
        arrays = self.dataset([split]).arrays
        if not (arrays["has_ground_truth"] & (arrays["entity_ids"] > 0)).any():
            raise self._nothing_to_score(split)

    def _nothing_to_score(self, split: str) -> DataError:
        return DataError(f"split {split!r} has no entity with a ground-truth box to score",
                         path=self.data_dir / f"{split}.npz", field="has_ground_truth")


def dataset_task(data_dir: str | Path) -> str:
    """The name of the task ("vqa" or "grounding") the prepared dataset ``data_dir`` was prepared for."""
    manifest = read_manifest(data_dir)
    for task in (VQATask, GroundingTask):
        if manifest.get("task") == task.manifest_task:
            return task.name
    raise DataError(f"unknown task {manifest.get('task')!r}", path=Path(data_dir) / MANIFEST, field="task")


def make_task(name: str, data_dir: str | Path) -> Task:
    """The task object for ``name`` ("vqa" or "grounding") on the prepared dataset ``data_dir``."""
    if name == "vqa":
        return VQATask(data_dir)
    if name == "grounding":
        return GroundingTask(data_dir)
    raise ConfigError(f"unknown task {name!r}; choose vqa or grounding")


def check_splits(training: TrainConfig, task: Task) -> None:
    """Refuse, before anything trains, ``train_splits`` the dataset does not have or that have no targets (a test
    split would train on all-zero targets) and a ``val_split`` it does not have or cannot score (the run would fail
    after its first epoch); an empty val_split means no validation. The error names the setting and the splits that
    would do: a misspelt val_split would otherwise train without validation."""
    hint = " (an empty val_split trains without validation)"
    for setting, splits, usable, what, setting_hint in (
            ("train_splits", training.train_splits, task.splits_with_targets(), "training targets", ""),
            ("val_split", [training.val_split], task.scored_splits(), "annotations to score against", hint)):
        for split in filter(None, splits):
            if split not in task.splits():
                raise ConfigError(f"training setting {setting!r}: {task.data_dir} has no split {split!r}; it has "
                                  f"{', '.join(task.splits())}{setting_hint}")
            if split not in usable:
                raise ConfigError(f"training setting {setting!r}: split {split!r} of {task.data_dir} has no {what}; "
                                  f"splits that have: {', '.join(usable)}{setting_hint}")

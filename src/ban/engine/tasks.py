"""What differs between VQA and grounding for the engine: datasets, forward call, loss, scores, evaluation.

A task object binds a prepared dataset directory. The trainer, ``ban evaluate`` and ``ban predict`` only talk to
this interface, so the loop itself is task-agnostic.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from ban.engine.config import TrainConfig
from ban.engine.loss import grounding_loss, vqa_loss
from ban.errors import ConfigError, DataError

if TYPE_CHECKING:
    from numpy import ndarray

Batch = dict[str, Tensor]


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The prepared dataset's manifest.json (its presence marks a complete dataset)."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError("not a prepared dataset (no manifest.json); run `ban prepare …` first", path=path)
    return json.loads(path.read_text(encoding="utf-8"))


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of ``batch`` to ``device``."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def autocast(device: torch.device, precision: str, cast_cache: bool = True) -> Any:
    """The autocast context of ``precision`` ("bf16" or "fp32") on ``device``. ``cast_cache=False`` turns off
    autocast's cache of weight casts, which a captured CUDA graph would reuse stale."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cast_cache)
    return nullcontext()


class Task:
    """Base of the two tasks; subclasses fill in the data and the math."""

    name = ""
    manifest_task = ""  # the "task" a prepared dataset of this kind has in its manifest

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        if self.manifest.get("task") != self.manifest_task:
            raise DataError(f"not a {self.name} dataset (its task is {self.manifest.get('task')!r}, expected "
                            f"{self.manifest_task!r})", path=self.data_dir / "manifest.json", field="task")

    def splits(self) -> list[str]:
        """Splits the prepared dataset holds."""
        splits = self.manifest.get("splits", [])
        return list(splits) if isinstance(splits, (list, tuple)) else list(splits.keys())

    def dataset(self, splits: Iterable[str]) -> Dataset:
        """The samples of one or more splits (concatenated in order)."""
        parts = []
        for split in splits:
            if split not in self.splits():
                raise ConfigError(f"split {split!r} is not in {self.data_dir} (it has: {', '.join(self.splits())})")
            parts.append(self.open_split(split))
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def loader(self, dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
        """In-order batches of ``dataset`` for evaluation and prediction."""
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=self.collate,
                          num_workers=num_workers)

    def model_sizes(self) -> dict[str, int]:
        """Model config fields fixed by the data (vocabulary, answers, feature width)."""
        raise NotImplementedError

    def word_vectors(self, width: int, two_tables: bool) -> tuple[Tensor, Tensor | None] | None:
        """GloVe initialisation of the word tables (glove.npy, glove_cooccurrence.npy); None when the dataset has
        none or when its vectors are not ``width``-d (a warning on stderr says so): the tables keep their random
        initialisation. Raises :class:`DataError` naming the file for one that is not a finite float table with a
        row per token of dictionary.json, or a second table of another width than glove.npy."""
        tokens = _tokens(self.data_dir)
        path = self.data_dir / "glove.npy"
        table = _load_table(path, tokens)
        if table is None:
            return None
        if table.shape[1] != width:
            print(f"ban: warning: {path} holds {table.shape[1]}-d word vectors but the model's word tables are "
                  f"{width}-d (model.word_dim): they start random instead. Train with --set model.word_dim="
                  f"{table.shape[1]}, or prepare the dataset with {width}-d GloVe vectors.", file=sys.stderr)
            return None
        second_path = self.data_dir / "glove_cooccurrence.npy"
        second = _load_table(second_path, tokens) if two_tables else None
        if second is not None and second.shape[1] != width:
            raise DataError(f"{second.shape[1]}-d vectors, but glove.npy's are {width}-d: prepare the dataset again",
                            path=second_path)
        return torch.from_numpy(table), None if second is None else torch.from_numpy(second)

    def open_split(self, split: str) -> Dataset:
        raise NotImplementedError

    def resident(self, dataset: Dataset, device: torch.device, precision: str, progress: bool) -> Any:
        """``dataset`` held on ``device``, with a ``batch(indices)`` method (the ``resident`` training setting)."""
        raise ConfigError(f"resident=true is implemented for VQA only; {self.name} trains from its data loader")

    def box_counts(self, dataset: Dataset) -> Any:
        """Each sample's box count ``[len(dataset)]`` (the ``bucket_boxes`` training setting)."""
        raise ConfigError(f"bucket_boxes=true is implemented for VQA only, not for {self.name}")

    collate: Callable[[list[Any]], Batch]

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        """The model's logits for ``batch``."""
        raise NotImplementedError

    def loss_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        """The training loss summed over the samples of ``batch`` (the trainer normalises it)."""
        raise NotImplementedError

    def selection_score(self, metrics: dict[str, Any]) -> float:
        """The validation number that picks the best epoch (VQA: overall accuracy; grounding: recall@1)."""
        raise NotImplementedError

    def score_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        """The training-time score summed over the samples of ``batch`` (VQA: soft target of the arg-max)."""
        raise NotImplementedError

    def batch_size(self, batch: Batch) -> int:
        return int(batch["features"].shape[0])

    def evaluate(self, model: nn.Module, split: str, batch_size: int, device: torch.device,
                 precision: str) -> dict[str, Any]:
        """The official metrics of ``model`` on ``split``."""
        raise NotImplementedError


def predict_logits(task: Task, model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                   precision: str, progress: str | None = None) -> Iterator[tuple[Batch, Tensor]]:
    """(batch, float32 logits) for every batch of ``dataset`` in order; the model runs in eval mode."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    loader = task.loader(dataset, batch_size)
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=progress, disable=progress is None, leave=False):
                batch = to_device(batch, device)
                with autocast(device, precision):
                    logits = task.forward(model, batch)
                yield batch, logits.float()
    finally:
        model.train(was_training)


def _load_table(path: Path, tokens: list[str]) -> ndarray | None:
    """The word-vector table in ``path`` as float32 ``[len(tokens), D]``, None if there is no such file; a
    :class:`DataError` naming it when it is not a readable ``.npy`` of finite floats with one row per token."""
    import numpy as np

    if not path.is_file():
        return None
    try:
        table = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"not a readable .npy file ({error}): prepare the dataset again", path=path) from None
    if table.ndim != 2 or table.dtype.kind != "f":
        raise DataError(f"{table.dtype} array of shape {list(table.shape)}, expected floats [tokens, D]", path=path)
    if len(table) != len(tokens):
        raise DataError(f"{len(table)} rows, but dictionary.json has {len(tokens)} tokens: prepare the dataset "
                        "again", path=path)
    table = np.array(table, dtype=np.float32)
    finite = np.isfinite(table).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise DataError("NaN or infinite values", path=path, record=f"row {row} (token {tokens[row]!r})")
    return table


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
        data = json.loads((self.data_dir / "answers.json").read_text(encoding="utf-8"))
        return list(data["answers"] if isinstance(data, dict) else data)

    def model_sizes(self) -> dict[str, int]:
        return {"num_tokens": len(_tokens(self.data_dir)), "num_answers": len(self.answers()),
                "feature_dim": _feature_dim(self)}

    def open_split(self, split: str) -> Dataset:
        from ban.data.features import FeatureStore
        from ban.data.vqa_dataset import VQADataset

        if self._store is None:  # one open feature store shared by all splits
            self._store = FeatureStore.open(self.data_dir)
        return VQADataset(self.data_dir, split, features=self._store)

    def resident(self, dataset: Dataset, device: torch.device, precision: str, progress: bool) -> Any:
        """A :class:`ban.data.resident.ResidentVQA`; features in bf16 when training in bf16 (every product that
        reads them casts them to bf16 anyway), else float32."""
        from ban.data.resident import ResidentVQA

        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        return ResidentVQA(dataset, device, dtype, progress=progress)

    def box_counts(self, dataset: Dataset) -> Any:
        import numpy as np

        from ban.data.vqa_dataset import vqa_parts

        return np.concatenate([part.box_counts() for part in vqa_parts(dataset)])

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        packing = {"real_rows": batch["rows"]} if "rows" in batch else {}  # made on the host: static_batch()
        return model(batch["features"], batch["boxes"], batch["questions"], box_mask=batch["box_mask"],
                     **packing).logits

    def loss_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        return vqa_loss(logits, batch["targets"], 1)

    def selection_score(self, metrics: dict[str, Any]) -> float:
        return float(metrics["overall"])

    def score_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        return batch["targets"].gather(1, logits.argmax(dim=1, keepdim=True)).sum()

    def annotations(self, split: str) -> list[dict[str, Any]]:
        """The official annotation records of ``split`` (read once)."""
        from ban.metrics.vqa import load_annotations

        if split not in self._annotations:
            path = self.data_dir / f"{split}_annotations.json"
            if not path.is_file():
                raise DataError(f"split {split!r} has no annotations to score against (test splits have none: "
                                "`ban predict` writes their answers for the evaluation server)", path=path)
            self._annotations[split] = load_annotations(path)
        return self._annotations[split]

    def evaluate(self, model: nn.Module, split: str, batch_size: int, device: torch.device,
                 precision: str) -> dict[str, Any]:
        """Official accuracy (overall, perAnswerType, perQuestionType) plus ``trainingScore`` (mean soft target
        of the arg-max answer) and ``upperBound`` (mean best soft target), all in %."""
        from ban.metrics.vqa import vqa_accuracy

        annotations = self.annotations(split)  # first: a split without them fails before the predictions
        labels = self.answers()
        predictions: dict[int, str] = {}
        sums = torch.zeros(3, dtype=torch.float64)
        for batch, logits in predict_logits(self, model, self.dataset([split]), batch_size, device, precision,
                                            progress=f"evaluating {split}"):
            best = logits.argmax(dim=1)
            targets = batch["targets"].float()
            sums += torch.tensor([targets.gather(1, best[:, None]).sum().item(),
                                  targets.max(dim=1).values.sum().item(), len(best)], dtype=torch.float64)
            predictions.update(zip(batch["question_ids"].tolist(), (labels[i] for i in best.tolist()), strict=True))
        result = vqa_accuracy(annotations, predictions)
        result["trainingScore"] = 100 * sums[0].item() / sums[2].item()
        result["upperBound"] = 100 * sums[1].item() / sums[2].item()
        return result


class GroundingTask(Task):
    """Flickr30k Entities phrase grounding: BCE over boxes × entities, Recall@K on evaluation."""

    name = "grounding"
    manifest_task = "grounding"

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(data_dir)
        from ban.data.flickr30k import collate_grounding

        self.collate = collate_grounding

    def model_sizes(self) -> dict[str, int]:
        return {"num_tokens": len(_tokens(self.data_dir)), "feature_dim": _feature_dim(self)}

    def open_split(self, split: str) -> Dataset:
        from ban.data.flickr30k import GroundingDataset

        return GroundingDataset(self.data_dir, split)

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        return model(batch["features"], batch["boxes"], batch["tokens"], batch["entity_positions"],
                     box_mask=batch["box_mask"], entity_mask=batch["entity_mask"]).logits

    def loss_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        # entities without a ground-truth box take no part in the loss, as in the reference
        return grounding_loss(logits, batch["targets"], batch["entity_mask"] & batch["has_ground_truth"], 1)

    def selection_score(self, metrics: dict[str, Any]) -> float:
        return float(metrics["recall@1"])

    def score_sum(self, logits: Tensor, batch: Batch) -> Tensor:
        """Per sample: the fraction of its entities with ground truth whose top box is a positive; summed."""
        scored = (batch["entity_mask"] & batch["has_ground_truth"]).float()  # [B, E]
        top = logits[:, 0].argmax(dim=1, keepdim=True)  # [B, 1, E]
        hit = batch["targets"].gather(1, top)[:, 0].gt(0).float()  # [B, E]
        return ((hit * scored).sum(1) / scored.sum(1).clamp(min=1)).sum()

    def evaluate(self, model: nn.Module, split: str, batch_size: int, device: torch.device,
                 precision: str) -> dict[str, Any]:
        """Recall@1/5/10, upper bound and per-type breakdown, in % (``ban.metrics.grounding``)."""
        from ban.metrics.grounding import GroundingRecall

        metric = GroundingRecall()
        for batch, logits in predict_logits(self, model, self.dataset([split]), batch_size, device, precision,
                                            progress=f"evaluating {split}"):
            metric.update(logits[:, 0], batch["targets"], batch["entity_mask"], batch["has_ground_truth"],
                          batch["entity_types"], batch["box_mask"])
        return metric.compute()


def _tokens(data_dir: Path) -> list[str]:
    return json.loads((data_dir / "dictionary.json").read_text(encoding="utf-8"))["tokens"]


def _feature_dim(task: Task) -> int:
    """Feature width: the manifest's ``feature_dim``, else the feature store's store.json."""
    if "feature_dim" in task.manifest:
        return int(task.manifest["feature_dim"])
    store = task.data_dir / "features" / "store.json"
    if not store.is_file():
        raise DataError("neither manifest.json nor features/store.json gives the feature width",
                        path=task.data_dir / "manifest.json", field="feature_dim")
    return int(json.loads(store.read_text(encoding="utf-8"))["feature_dim"])


def make_task(name: str, data_dir: str | Path) -> Task:
    """The task object for ``name`` ("vqa" or "grounding") on the prepared dataset ``data_dir``."""
    if name == "vqa":
        return VQATask(data_dir)
    if name == "grounding":
        return GroundingTask(data_dir)
    raise ConfigError(f"unknown task {name!r}; choose vqa or grounding")


def check_splits(training: TrainConfig, task: Task) -> None:
    """Refuse ``train_splits`` or a ``val_split`` the dataset does not have (an empty val_split: no validation),
    naming the setting and the splits there are: a misspelt val_split would otherwise train without validation."""
    available = task.splits()
    for setting, splits in (("train_splits", training.train_splits), ("val_split", [training.val_split])):
        for split in filter(None, splits):
            if split not in available:
                hint = " (an empty val_split trains without validation)" if setting == "val_split" else ""
                raise ConfigError(f"training setting {setting!r}: {task.data_dir} has no split {split!r}; it has "
                                  f"{', '.join(available)}{hint}")

"""The training-time view of a prepared VQA dataset directory (written by :func:`ban.data.vqa2.prepare_vqa2`).

Questions, tokens and sparse targets of a split are small and held in memory; region features are read from
the memory-mapped feature store one image at a time, so memory does not grow with the feature files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from ban.data.distinct import repeated_positions
from ban.data.features import FeatureStore
from ban.data.npyfile import offsets_fit, read_split_npz
from ban.data.prepared import (
    check_manifest_size,
    check_manifest_sizes,
    check_split,
    check_token_ids,
    manifest_size,
    open_features,
    read_answers,
    read_manifest,
    split_flag,
)
from ban.errors import ConfigError, DataError

# array → (dtype kinds allowed, number of dimensions)
_SPLIT_ARRAYS: dict[str, tuple[str, int]] = {
    "question_id": ("iu", 1), "image_id": ("iu", 1), "tokens": ("iu", 2), "target_offsets": ("iu", 1),
    "target_labels": ("iu", 1), "target_scores": ("f", 1), "answer_type": ("U", 1),
}


def load_split_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a prepared ``<split>.npz``, checked: no pickled objects (never unpickled), the expected
    names, types and dimensions, one row per question, each question id once, target offsets that fit the labels
    and soft scores in [0, 1]."""
    arrays = read_split_npz(path, _SPLIT_ARRAYS)
    count = len(arrays["question_id"])
    offsets = arrays["target_offsets"]
    if any(len(arrays[name]) != count for name in ("image_id", "tokens", "answer_type")) or len(offsets) != count + 1:
        raise DataError("arrays disagree on the number of questions", path=path)
    if len(arrays["target_labels"]) != len(arrays["target_scores"]) or \
            not offsets_fit(offsets, count, len(arrays["target_labels"])):
        raise DataError("target offsets do not fit the labels", path=path, field="target_offsets")
    scores = arrays["target_scores"]
    outside = np.flatnonzero(~((scores >= 0) & (scores <= 1)))  # NaN is outside too
    if len(outside):
        row = int(np.searchsorted(offsets, outside[0], side="right")) - 1
        raise DataError(f"soft score {float(scores[outside[0]]):g} outside [0, 1]", path=path,
                        record=f"question_id={arrays['question_id'][row]}", field="target_scores")
    repeated = repeated_positions(arrays["question_id"])
    if len(repeated):
        raise DataError(f"question listed twice (rows {repeated[0]} and {repeated[1]})", path=path,
                        record=f"question_id={arrays['question_id'][repeated[0]]}", field="question_id")
    return arrays


class VQADataset(Dataset):
    """One split of a prepared VQA dataset.

    Item ``i`` is a dict: ``features`` float32 ``[n, D]``, ``boxes`` float32 ``[n, 6]`` (x1/w, y1/h, x2/w,
    y2/h, bw/w, bh/h), ``question`` int64 ``[14]`` (padded at the end with :attr:`padding_index`), ``target``
    float32 ``[A]`` dense soft scores (zeros for splits without annotations), ``question_id`` int.
    ``features`` may be given to share one open store between splits.
    """

    def __init__(self, data_dir: str | os.PathLike[str], split: str, features: FeatureStore | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir, "vqa2")
        check_split(self.data_dir, self.manifest, split)
        self.split = split
        self.annotated = split_flag(self.data_dir, self.manifest, split, "annotated")
        arrays = load_split_arrays(self.data_dir / f"{split}.npz")
        self.question_ids = arrays["question_id"]
        self.image_ids = arrays["image_id"]
        self.tokens = arrays["tokens"]
        self.target_offsets = arrays["target_offsets"]
        self.target_labels = arrays["target_labels"].astype(np.int64)
        self.target_scores = arrays["target_scores"]
        self.answer_types = arrays["answer_type"]
        self.features = open_features(self.data_dir) if features is None else features
        self._check(self.data_dir / f"{split}.npz")

    def _check(self, path: Path) -> None:
        """:class:`DataError` for a manifest that disagrees with the files the model is sized from
        (``Task.model_sizes``: dictionary.json, answers.json, the feature store), or for a question of the split
        at ``path`` whose labels, tokens or image are outside them; the checks read no features."""
        check_manifest_sizes(self.data_dir, self.manifest, self.features)
        answers = len(self.answers())
        check_manifest_size(self.data_dir, self.manifest, "num_answers", answers, f"answers.json lists {answers}")
        if len(self.target_labels) and not 0 <= self.target_labels.min() <= self.target_labels.max() < self.num_answers:
            raise DataError(f"labels outside [0, {self.num_answers})", path=path, field="target_labels")
        check_token_ids(self.tokens, self.padding_index, path)
        self.features.check_images(self.image_ids, path=path,
                                   record=lambda row: f"question_id={self.question_ids[row]}")

    @property
    def num_answers(self) -> int:
        return manifest_size(self.data_dir, self.manifest, "num_answers")

    @property
    def padding_index(self) -> int:
        return manifest_size(self.data_dir, self.manifest, "padding_index")

    @property
    def feature_dim(self) -> int:
        return manifest_size(self.data_dir, self.manifest, "feature_dim")

    def answers(self) -> list[str]:
        """The candidate answers in label order."""
        return read_answers(self.data_dir)

    def box_counts(self) -> np.ndarray:
        """Number of regions of each question's image, ``[Q]`` int64 (for batching by size)."""
        return self.features.box_counts(self.image_ids)

    def __len__(self) -> int:
        return len(self.question_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        features, spatial, _ = self.features.get(int(self.image_ids[index]))
        target = torch.zeros(self.num_answers, dtype=torch.float32)
        start, end = self.target_offsets[index], self.target_offsets[index + 1]
        target[torch.from_numpy(self.target_labels[start:end])] = torch.from_numpy(self.target_scores[start:end])
        return {
            "features": torch.from_numpy(features),
            "boxes": torch.from_numpy(spatial),
            "question": torch.from_numpy(self.tokens[index].astype(np.int64)),
            "target": target,
            "question_id": int(self.question_ids[index]),
        }


def vqa_parts(dataset: Dataset) -> list[VQADataset]:
    """The :class:`VQADataset` splits of ``dataset`` (one split, or a ConcatDataset of them) in order."""
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    if not all(isinstance(part, VQADataset) for part in parts):
        raise ConfigError("expected prepared VQA splits")
    return list(parts)

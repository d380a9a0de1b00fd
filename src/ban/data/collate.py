"""Batching of VQA items: boxes padded per batch to the largest box count, with a mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def collate_vqa(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack :class:`ban.data.vqa_dataset.VQADataset` items into a batch.

    Returns ``features`` ``[B, N, D]`` (padding rows are zeros), ``boxes`` ``[B, N, 6]`` (zeros for padding),
    ``box_mask`` ``[B, N]`` bool (True for real boxes), ``questions`` ``[B, L]`` int64, ``targets`` ``[B, A]``
    float32 and ``question_ids`` ``[B]`` int64, where N is the largest box count in the batch.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    counts = [sample["features"].shape[0] for sample in samples]
    batch, most = len(samples), max(counts)
    first = samples[0]
    features = first["features"].new_zeros((batch, most, first["features"].shape[1]))
    boxes = first["boxes"].new_zeros((batch, most, first["boxes"].shape[1]))
    box_mask = torch.zeros((batch, most), dtype=torch.bool)
    for row, (sample, count) in enumerate(zip(samples, counts, strict=True)):
        features[row, :count] = sample["features"]
        boxes[row, :count] = sample["boxes"]
        box_mask[row, :count] = True
    return {
        "features": features,
        "boxes": boxes,
        "box_mask": box_mask,
        "questions": torch.stack([sample["question"] for sample in samples]),
        "targets": torch.stack([sample["target"] for sample in samples]),
        "question_ids": torch.tensor([sample["question_id"] for sample in samples], dtype=torch.int64),
    }

"""Batching of dataset items: boxes padded per batch to the largest box count N, with a mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def padded_boxes(samples: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The per-box tensors ``names`` (each ``[n_i, …]``, n_i the item's box count) of ``samples`` stacked into
    ``[B, N, …]`` with zeros after each item's boxes, and ``box_mask [B, N]`` bool (True for real boxes)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    counts = torch.tensor([sample[names[0]].shape[0] for sample in samples])
    most = int(counts.max())
    batch = {name: samples[0][name].new_zeros((len(samples), most, *samples[0][name].shape[1:])) for name in names}
    for row, sample in enumerate(samples):
        for name in names:
            batch[name][row, : len(sample[name])] = sample[name]
    return {**batch, "box_mask": torch.arange(most)[None, :] < counts[:, None]}


def collate_vqa(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack :class:`ban.data.vqa_dataset.VQADataset` items into a batch.

    Returns ``features`` ``[B, N, D]`` (padding rows are zeros), ``boxes`` ``[B, N, 6]`` (zeros for padding),
    ``box_mask`` ``[B, N]`` bool (True for real boxes), ``questions`` ``[B, L]`` int64, ``targets`` ``[B, A]``
    float32 and ``question_ids`` ``[B]`` int64, where N is the largest box count in the batch.
    """
    return {
        **padded_boxes(samples, ("features", "boxes")),
        "questions": torch.stack([sample["question"] for sample in samples]),
        "targets": torch.stack([sample["target"] for sample in samples]),
        "question_ids": torch.tensor([sample["question_id"] for sample in samples], dtype=torch.int64),
    }


def collate_grounding(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch :class:`ban.data.flickr30k.GroundingDataset` items, padding boxes to the largest count N of the batch.

    Returns ``features [B, N, D]`` (zero rows for padding), ``boxes [B, N, 6]``, ``box_mask [B, N]`` bool,
    ``tokens [B, L]`` int64, ``entity_positions [B, E]`` int64, ``entity_mask [B, E]`` bool,
    ``targets [B, N, E]`` float32 (0 at padded boxes), ``entity_types [B, E]`` int64,
    ``has_ground_truth [B, E]`` bool and ``image_ids [B]`` int64.
    """
    return {
        **padded_boxes(samples, ("features", "boxes", "targets")),
        **{name: torch.stack([sample[name] for sample in samples])
           for name in ("tokens", "entity_positions", "entity_mask", "entity_types", "has_ground_truth")},
        "image_ids": torch.stack([sample["image_id"] for sample in samples]),
    }

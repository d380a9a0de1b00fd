"""Reading a prepared grounding dataset (``ban prepare flickr30k``): :class:`GroundingDataset` and
:func:`collate_grounding`.

Each example is one caption with E entity slots (slot 0 always used; empty slots have position 0 and are
masked). Targets are rebuilt per example from the sparse positive-box lists of the split's ``.npz``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ban.data.features import FeatureStore
from ban.data.jsonfile import read_json
from ban.errors import DataError

_SPLIT_ARRAYS = (
    "image_id", "caption_index", "tokens", "entity_positions", "entity_ids", "entity_types", "has_ground_truth",
    "positive_offsets", "positive_boxes",
)


def read_grounding_manifest(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a prepared grounding dataset; :class:`DataError` if it is missing or not one."""
    path = Path(data_dir) / "manifest.json"
    manifest = read_json(path, missing="no manifest.json: not a complete prepared dataset "
                                       "(run `ban prepare flickr30k`)")
    if not isinstance(manifest, dict) or manifest.get("task") != "grounding":
        raise DataError("not a grounding dataset", path=path, field="task")
    return manifest


class GroundingDataset(Dataset):
    """One split of a prepared grounding dataset. Item ``i`` is a dict of tensors (n = the image's box count,
    L = caption length, E = entity slots):

    ``features [n, D]`` float32, ``boxes [n, 6]`` float32 (normalised spatial features), ``tokens [L]``
    int64, ``entity_positions [E]`` int64, ``entity_mask [E]`` bool, ``entity_types [E]`` int64 (type bit
    sets, see :mod:`ban.metrics.grounding`), ``has_ground_truth [E]`` bool, ``targets [n, E]`` float32 (1.0
    where the box is a positive of the entity) and ``image_id`` (0-dim int64).
    """

    def __init__(self, data_dir: str | os.PathLike[str], split: str) -> None:
        self.data_dir = Path(data_dir)
        self.manifest = read_grounding_manifest(self.data_dir)
        if split not in self.manifest.get("splits", {}):
            raise DataError(f"no split {split!r} (have: {', '.join(self.manifest.get('splits', {}))})",
                            path=self.data_dir / "manifest.json", field="splits")
        path = self.data_dir / f"{split}.npz"
        try:
            with np.load(path) as archive:
                missing = [name for name in _SPLIT_ARRAYS if name not in archive.files]
                if missing:
                    raise DataError(f"missing arrays {missing}", path=path)
                self.arrays = {name: archive[name] for name in _SPLIT_ARRAYS}
        except FileNotFoundError:
            raise DataError("split file not found", path=path) from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # not an .npz, object arrays (pickles)
            raise DataError(f"not a readable .npz of plain arrays ({error})", path=path) from None
        self.num_entities = int(self.arrays["entity_ids"].shape[1])
        if len(self.arrays["positive_offsets"]) != len(self) * self.num_entities + 1:
            raise DataError("positive_offsets does not match sentences × entity slots", path=path,
                            field="positive_offsets")
        self.store = FeatureStore.open(self.data_dir / "features")

    def __len__(self) -> int:
        return int(len(self.arrays["image_id"]))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        arrays = self.arrays
        image_id = int(arrays["image_id"][index])
        features, spatial, _ = self.store.get(image_id)
        entities = self.num_entities
        offsets = arrays["positive_offsets"][index * entities: (index + 1) * entities + 1]
        boxes = arrays["positive_boxes"][offsets[0]: offsets[-1]].astype(np.int64)
        owners = np.repeat(np.arange(entities), np.diff(offsets))
        if len(boxes) and boxes.max() >= len(features):
            raise DataError(
                f"positive box {int(boxes.max())} but the image has {len(features)} boxes: the prepared data "
                "does not match its feature store", path=self.data_dir, record=f"sentence {index}",
                field="positive_boxes",
            )
        targets = torch.zeros(len(features), entities)
        targets[torch.from_numpy(boxes), torch.from_numpy(owners)] = 1.0
        return {
            "features": torch.from_numpy(features),
            "boxes": torch.from_numpy(spatial),
            "tokens": torch.from_numpy(arrays["tokens"][index].astype(np.int64)),
            "entity_positions": torch.from_numpy(arrays["entity_positions"][index]),
            "entity_mask": torch.from_numpy(arrays["entity_ids"][index] > 0),
            "entity_types": torch.from_numpy(arrays["entity_types"][index]),
            "has_ground_truth": torch.from_numpy(arrays["has_ground_truth"][index]),
            "targets": targets,
            "image_id": torch.tensor(image_id),
        }


def collate_grounding(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch :class:`GroundingDataset` items, padding boxes to the largest count N of the batch.

    Returns ``features [B, N, D]`` (zero rows for padding), ``boxes [B, N, 6]``, ``box_mask [B, N]`` bool,
    ``tokens [B, L]`` int64, ``entity_positions [B, E]`` int64, ``entity_mask [B, E]`` bool,
    ``targets [B, N, E]`` float32 (0 at padded boxes), ``entity_types [B, E]`` int64,
    ``has_ground_truth [B, E]`` bool and ``image_ids [B]`` int64.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    counts = [sample["features"].shape[0] for sample in samples]
    num_boxes = max(counts)
    batch = len(samples)
    first = samples[0]
    features = first["features"].new_zeros(batch, num_boxes, first["features"].shape[1])
    boxes = first["boxes"].new_zeros(batch, num_boxes, first["boxes"].shape[1])
    targets = first["targets"].new_zeros(batch, num_boxes, first["targets"].shape[1])
    for row, (sample, count) in enumerate(zip(samples, counts, strict=True)):
        features[row, :count] = sample["features"]
        boxes[row, :count] = sample["boxes"]
        targets[row, :count] = sample["targets"]
    stacked = {
        name: torch.stack([sample[name] for sample in samples])
        for name in ("tokens", "entity_positions", "entity_mask", "entity_types", "has_ground_truth")
    }
    return {
        "features": features,
        "boxes": boxes,
        "box_mask": torch.arange(num_boxes)[None, :] < torch.tensor(counts)[:, None],
        **stacked,
        "targets": targets,
        "image_ids": torch.stack([sample["image_id"] for sample in samples]),
    }

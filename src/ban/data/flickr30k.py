"""Reading a prepared grounding dataset (``ban prepare flickr30k``): :class:`GroundingDataset` (batched by
:func:`ban.data.collate.collate_grounding`).

Each example is one caption with E entity slots (slot 0 always used; empty slots have position 0 and are
masked). Targets are rebuilt per example from the sparse positive-box lists of the split's ``.npz``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ban.data.features import FeatureStore
from ban.data.npyfile import NPZ_ERRORS
from ban.data.prepared import check_split, read_manifest
from ban.errors import DataError

_SPLIT_ARRAYS = (
    "image_id", "caption_index", "tokens", "entity_positions", "entity_ids", "entity_types", "has_ground_truth",
    "positive_offsets", "positive_boxes",
)


def check_entity_positions(arrays: dict[str, np.ndarray], path: Path) -> None:
    """:class:`DataError` unless ``entity_positions [S, E]`` matches ``entity_ids [S, E]`` and every position
    is a token index in [0, L) of ``tokens [S, L]`` (checked here, once, because the model does not: a wrong
    index would fail inside a gather, on a GPU as a device-side assert)."""
    positions, tokens = arrays["entity_positions"], arrays["tokens"]
    if positions.shape != arrays["entity_ids"].shape or positions.dtype.kind not in "iu":
        raise DataError(f"expected integers of shape {list(arrays['entity_ids'].shape)} like entity_ids, got "
                        f"{positions.dtype} of shape {list(positions.shape)}", path=path, field="entity_positions")
    outside = (positions < 0) | (positions >= tokens.shape[1])
    if outside.any():
        sentence, slot = (int(i) for i in np.argwhere(outside)[0])
        raise DataError(f"position {int(positions[sentence, slot])} of entity slot {slot} is outside the "
                        f"{tokens.shape[1]} tokens", path=path, record=f"sentence {sentence}",
                        field="entity_positions")


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
        self.manifest = read_manifest(self.data_dir, "grounding")
        check_split(self.data_dir, self.manifest, split)
        path = self.data_dir / f"{split}.npz"
        try:
            with np.load(path) as archive:
                missing = [name for name in _SPLIT_ARRAYS if name not in archive.files]
                if missing:
                    raise DataError(f"missing arrays {missing}", path=path)
                self.arrays = {name: archive[name] for name in _SPLIT_ARRAYS}
        except FileNotFoundError:
            raise DataError("split file not found", path=path) from None
        except NPZ_ERRORS as error:  # not an .npz, object arrays (pickles), a damaged archive
            raise DataError(f"not a readable .npz of plain arrays ({error})", path=path) from None
        self.num_entities = int(self.arrays["entity_ids"].shape[1])
        if len(self.arrays["positive_offsets"]) != len(self) * self.num_entities + 1:
            raise DataError("positive_offsets does not match sentences × entity slots", path=path,
                            field="positive_offsets")
        check_entity_positions(self.arrays, path)
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

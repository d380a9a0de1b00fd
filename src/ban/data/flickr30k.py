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

from ban.data.npyfile import offsets_fit, read_split_npz
from ban.data.prepared import (
    check_manifest_sizes,
    check_split,
    check_token_ids,
    manifest_size,
    open_features,
    read_manifest,
)
from ban.errors import DataError

# array → (dtype kinds allowed, number of dimensions); S sentences, L tokens, E entity slots, P positives
_SPLIT_ARRAYS: dict[str, tuple[str, int]] = {
    "image_id": ("iu", 1), "caption_index": ("iu", 1), "tokens": ("iu", 2), "entity_positions": ("iu", 2),
    "entity_ids": ("iu", 2), "entity_types": ("iu", 2), "has_ground_truth": ("b", 2), "positive_offsets": ("iu", 1),
    "positive_boxes": ("iu", 1),
}


def check_entity_positions(arrays: dict[str, np.ndarray], path: Path) -> None:
    """:class:`DataError` unless every entity position [S, E] is a token index in [0, L) of ``tokens [S, L]``
    (checked here, once, because the model does not: a wrong index would fail inside a gather, on a GPU as a
    device-side assert)."""
    positions, tokens = arrays["entity_positions"], arrays["tokens"]
    outside = (positions < 0) | (positions >= tokens.shape[1])
    if outside.any():
        sentence, slot = (int(i) for i in np.argwhere(outside)[0])
        raise DataError(f"position {int(positions[sentence, slot])} of entity slot {slot} is outside the "
                        f"{tokens.shape[1]} tokens", path=path, record=f"sentence {sentence}",
                        field="entity_positions")


def load_split_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a prepared grounding ``<split>.npz``, checked: no pickled objects (never unpickled), the
    expected names, types and dimensions, S rows in each per-sentence array (tokens [S, L]; the entity arrays
    [S, E], E ≥ 1), positive offsets [S·E + 1] that fit the positive boxes [P] (box indices ≥ 0; their bound is
    the image's box count, checked per item) and entity positions inside the caption."""
    arrays = read_split_npz(path, _SPLIT_ARRAYS)
    count, entities = arrays["entity_ids"].shape
    for name in ("image_id", "caption_index", "tokens", "entity_positions", "entity_types", "has_ground_truth"):
        if len(arrays[name]) != count or (arrays[name].ndim == 2 and name != "tokens"
                                          and arrays[name].shape[1] != entities):
            raise DataError(f"shape {list(arrays[name].shape)} does not fit entity_ids' {[count, entities]}",
                            path=path, field=name)
    if entities == 0:
        raise DataError("no entity slot (E = 0)", path=path, field="entity_ids")
    offsets = arrays["positive_offsets"]
    if not offsets_fit(offsets, count * entities, len(arrays["positive_boxes"])):
        raise DataError("positive offsets do not fit sentences × entity slots and the positive boxes", path=path,
                        field="positive_offsets")
    if (arrays["positive_boxes"] < 0).any():
        raise DataError("negative box index", path=path, field="positive_boxes")
    check_entity_positions(arrays, path)
    return arrays


class GroundingDataset(Dataset):
    """One split of a prepared grounding dataset. Item ``i`` is a dict of tensors (n = the image's box count,
    L = caption length, E = entity slots):

    ``features [n, D]`` float32, ``boxes [n, 6]`` float32 (normalised spatial features), ``tokens [L]``
    int64, ``entity_positions [E]`` int64, ``entity_mask [E]`` bool, ``entity_types [E]`` int64 (type bit
    sets, see :mod:`ban.metrics.grounding`), ``has_ground_truth [E]`` bool, ``targets [n, E]`` float32 (1.0
    where the box is a positive of the entity) and ``image_id`` (0-dim int64).

    Opening a split checks that the manifest agrees with dictionary.json and the feature store, that every token
    id is a word or the padding, and that the store holds every caption's image (:class:`DataError` naming the
    file, record and field otherwise).
    """

    def __init__(self, data_dir: str | os.PathLike[str], split: str) -> None:
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir, "grounding")
        check_split(self.data_dir, self.manifest, split)
        self.path = self.data_dir / f"{split}.npz"
        self.arrays = load_split_arrays(self.path)
        self.num_entities = int(self.arrays["entity_ids"].shape[1])
        self.store = open_features(self.data_dir)
        check_manifest_sizes(self.data_dir, self.manifest, self.store)
        check_token_ids(self.arrays["tokens"], manifest_size(self.data_dir, self.manifest, "padding_index"), self.path)
        self.store.check_images(self.arrays["image_id"], path=self.path, record=lambda row: f"sentence {row}")

    def __len__(self) -> int:
        return int(len(self.arrays["image_id"]))

    def box_counts(self) -> np.ndarray:
        """Number of regions of each caption's image, ``[S]`` int64, from the feature store's index (no features
        read; for batching by size)."""
        return self.store.box_counts(self.arrays["image_id"])

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
                "does not match its feature store", path=self.path, record=f"sentence {index}",
                field="positive_boxes",
            )
        targets = torch.zeros(len(features), entities)
        targets[torch.from_numpy(boxes), torch.from_numpy(owners)] = 1.0
        return {
            "features": torch.from_numpy(features),
            "boxes": torch.from_numpy(spatial),
            "tokens": torch.from_numpy(arrays["tokens"][index].astype(np.int64)),
            "entity_positions": torch.from_numpy(arrays["entity_positions"][index].astype(np.int64)),
            "entity_mask": torch.from_numpy(arrays["entity_ids"][index] > 0),
            "entity_types": torch.from_numpy(arrays["entity_types"][index].astype(np.int64)),
            "has_ground_truth": torch.from_numpy(arrays["has_ground_truth"][index]),
            "targets": targets,
            "image_id": torch.tensor(image_id),
        }

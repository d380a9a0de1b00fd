"""Phrase-grounding recall (Flickr30k Entities), as the reference evaluation computes it.

An entity (a phrase with ground-truth boxes) is a hit at K if any of its K highest-scoring detected boxes is
a positive (IoU ≥ 0.5 with any ground-truth box of the entity). Recall@K = hits / all entities with
ground-truth boxes — entities none of whose detected boxes is a positive count as misses. The upper bound is
the fraction of those entities with at least one positive detected box (≈ 87.45% on the test split with the
bottom-up boxes). Results are percentages, overall and per entity type; a phrase of several types (e.g.
``people/other``) counts once for each.

Entity types travel as a bit set per entity: bit t is set when the phrase has type ``ENTITY_TYPES[t]``
(:func:`ban.data.flickr30k_parse.type_bits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ban.data.flickr30k_parse import ENTITY_TYPES
from ban.errors import DataError

RECALL_AT: tuple[int, ...] = (1, 5, 10)

TensorLike = torch.Tensor | np.ndarray


class GroundingRecall:
    """Recall@K accumulated over batches; :meth:`compute` gives the percentages.

    >>> metric = GroundingRecall()
    >>> logits = torch.tensor([[[2.0], [1.0]]])            # [B=1, N=2, E=1]
    >>> targets = torch.tensor([[[0.0], [1.0]]])           # the second box is the positive
    >>> metric.update(logits, targets, torch.tensor([[True]]), torch.tensor([[True]]), torch.tensor([[1]]))
    >>> metric.compute()["recall@1"], metric.compute()["recall@5"]
    (0.0, 100.0)
    """

    def __init__(self, ks: Sequence[int] = RECALL_AT) -> None:
        if not ks or min(ks) < 1:
            raise ValueError(f"recall cut-offs must be positive, got {list(ks)}")
        self.ks = tuple(ks)
        num_types = len(ENTITY_TYPES)
        self.count = 0
        self.hits = np.zeros(len(self.ks), dtype=np.int64)
        self.reachable = 0
        self.type_count = np.zeros(num_types, dtype=np.int64)
        self.type_hits = np.zeros((len(self.ks), num_types), dtype=np.int64)
        self.type_reachable = np.zeros(num_types, dtype=np.int64)

    @torch.no_grad()
    def update(
        self,
        logits: TensorLike,
        targets: TensorLike,
        entity_mask: TensorLike,
        has_ground_truth: TensorLike,
        entity_types: TensorLike,
        box_mask: TensorLike | None = None,
    ) -> None:
        """Add one batch.

        ``logits`` ``[B, N, E]`` box scores per entity (the grounding model's ``[B, 1, N, E]`` squeezed);
        ``targets`` ``[B, N, E]`` > 0 where the box is a positive of the entity; ``entity_mask`` ``[B, E]``
        bool, real entity slots; ``has_ground_truth`` ``[B, E]`` bool, entities with ground-truth boxes (only
        these are scored); ``entity_types`` ``[B, E]`` int64 type bit sets; ``box_mask`` ``[B, N]`` bool, real
        boxes (default: all) — padded boxes are never ranked above real ones nor count as positives. Boxes of equal
        score rank in box order (bf16 logits can tie; float32 ones practically never do).
        """
        logits = torch.as_tensor(logits).float()
        batch, num_boxes, num_entities = logits.shape
        positive = torch.as_tensor(targets) > 0
        if box_mask is None:
            box_mask = torch.ones(batch, num_boxes, dtype=torch.bool, device=logits.device)
        box_mask = torch.as_tensor(box_mask, dtype=torch.bool)
        positive = positive & box_mask[:, :, None]
        scored = torch.as_tensor(entity_mask, dtype=torch.bool) & torch.as_tensor(has_ground_truth,
                                                                                 dtype=torch.bool)
        ranked = logits.masked_fill(~box_mask[:, :, None], float("-inf"))
        depth = min(max(self.ks), num_boxes)
        top = ranked.sort(dim=1, descending=True, stable=True).indices[:, :depth]  # [B, depth, E]; ties: box order
        positive_at_rank = positive.gather(1, top)  # [B, depth, E]
        bits = torch.as_tensor(entity_types, dtype=torch.int64)
        of_type = (bits[..., None] >> torch.arange(len(ENTITY_TYPES), device=bits.device)) & 1 == 1  # [B,E,T]
        of_type = of_type & scored[..., None]

        self.count += int(scored.sum())
        self.type_count += of_type.sum((0, 1)).cpu().numpy()
        reachable = positive.any(1)  # [B, E]
        self.reachable += int((reachable & scored).sum())
        self.type_reachable += (of_type & reachable[..., None]).sum((0, 1)).cpu().numpy()
        for i, k in enumerate(self.ks):
            hit = positive_at_rank[:, :k].any(1)  # [B, E]
            self.hits[i] += int((hit & scored).sum())
            self.type_hits[i] += (of_type & hit[..., None]).sum((0, 1)).cpu().numpy()

    def add(self, other: GroundingRecall) -> None:
        """Add the counts of ``other`` (the same cut-offs), e.g. another process's share of the batches."""
        if other.ks != self.ks:
            raise ValueError(f"recall cut-offs differ: {list(self.ks)} and {list(other.ks)}")
        self.count += other.count
        self.hits += other.hits
        self.reachable += other.reachable
        self.type_count += other.type_count
        self.type_hits += other.type_hits
        self.type_reachable += other.type_reachable

    def compute(self) -> dict[str, Any]:
        """``{"recall@1": %, "recall@5": %, "recall@10": %, "upperBound": %, "count": n,
        "perType": {type: {"recall@1": %, …, "upperBound": %, "count": n}}}``; types without scored entities
        are left out. Raises :class:`DataError` if nothing was scored."""
        if self.count == 0:
            raise DataError("no entities with ground-truth boxes were scored")
        result = _summary(self.ks, self.hits, self.reachable, self.count)
        result["perType"] = {
            name: _summary(self.ks, self.type_hits[:, t], int(self.type_reachable[t]), int(self.type_count[t]))
            for t, name in enumerate(ENTITY_TYPES)
            if self.type_count[t] > 0
        }
        return result


def _summary(ks: Sequence[int], hits: np.ndarray, reachable: int, count: int) -> dict[str, Any]:
    summary: dict[str, Any] = {f"recall@{k}": 100.0 * int(hits[i]) / count for i, k in enumerate(ks)}
    summary["upperBound"] = 100.0 * reachable / count
    summary["count"] = count
    return summary

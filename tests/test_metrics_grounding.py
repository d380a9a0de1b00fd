"""Grounding recall: hand-worked cases and a naive per-entity loop as the independent reference."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from ban.data.flickr30k_parse import ENTITY_TYPES, type_bits
from ban.errors import DataError
from ban.metrics.grounding import GroundingRecall

PEOPLE, CLOTHING, OTHER = type_bits(["people"]), type_bits(["clothing"]), type_bits(["other"])


def grounding_recall(logits, targets, entity_mask, has_ground_truth, entity_types, box_mask=None, ks=(1, 5, 10)):
    """Recall@K of one batch (arguments as :meth:`GroundingRecall.update`)."""
    metric = GroundingRecall(ks)
    metric.update(logits, targets, entity_mask, has_ground_truth, entity_types, box_mask)
    return metric.compute()


def test_type_bits() -> None:
    assert type_bits(["people"]) == 1
    assert type_bits(["people", "other"]) == 0b10000001
    assert type_bits(["scene"]) == 1 << 6
    assert type_bits([]) == 0
    with pytest.raises(KeyError, match="notvisual"):
        type_bits(["notvisual"])


def test_hand_worked_batch() -> None:
    # one sentence, 12 boxes, 4 entity slots
    logits = torch.arange(12, 0, -1, dtype=torch.float32)[None, :, None].repeat(1, 1, 4)  # box 0 ranks first
    targets = torch.zeros(1, 12, 4)
    targets[0, 0, 0] = 1  # entity 0: positive at rank 1 → hit @1, @5, @10
    targets[0, 6, 1] = 1  # entity 1: positive at rank 7 → hit @10 only
    # entity 2: has ground truth but no positive detected box → miss everywhere, not reachable
    targets[0, 11, 3] = 1  # entity 3: slot is padding — not scored even though it has a "positive"
    scores = grounding_recall(
        logits, targets,
        entity_mask=torch.tensor([[True, True, True, False]]),
        has_ground_truth=torch.tensor([[True, True, True, True]]),
        entity_types=torch.tensor([[PEOPLE, type_bits(["people", "other"]), CLOTHING, OTHER]]),
    )
    assert scores["count"] == 3
    assert scores["recall@1"] == pytest.approx(100 / 3)
    assert scores["recall@5"] == pytest.approx(100 / 3)
    assert scores["recall@10"] == pytest.approx(200 / 3)
    assert scores["upperBound"] == pytest.approx(200 / 3)
    per_type = scores["perType"]
    assert set(per_type) == {"people", "clothing", "other"}
    assert per_type["people"] == {"recall@1": 50.0, "recall@5": 50.0, "recall@10": 100.0,
                                  "upperBound": 100.0, "count": 2}
    assert per_type["other"] == {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 100.0,
                                 "upperBound": 100.0, "count": 1}
    assert per_type["clothing"]["count"] == 1 and per_type["clothing"]["recall@10"] == 0.0


def test_entities_without_ground_truth_are_not_scored() -> None:
    logits = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])  # [1, 2, 2]
    targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    scores = grounding_recall(logits, targets, torch.tensor([[True, True]]), torch.tensor([[True, False]]),
                              torch.tensor([[PEOPLE, PEOPLE]]))
    assert scores["count"] == 1 and scores["recall@1"] == 100.0


def test_padded_boxes_never_rank_nor_count() -> None:
    # box 2 is padding with the highest logit and a (bogus) positive target
    logits = torch.tensor([[[0.1], [0.5], [9.0]]])
    targets = torch.tensor([[[0.0], [1.0], [1.0]]])
    box_mask = torch.tensor([[True, True, False]])
    args = (torch.tensor([[True]]), torch.tensor([[True]]), torch.tensor([[PEOPLE]]))
    assert grounding_recall(logits, targets, *args, box_mask=box_mask)["recall@1"] == 100.0
    assert grounding_recall(logits, targets, *args)["recall@1"] == 100.0  # unmasked: box 2 is a real positive
    targets[0, 1, 0] = 0
    masked = grounding_recall(logits, targets, *args, box_mask=box_mask)
    assert masked["recall@10"] == 0.0 and masked["upperBound"] == 0.0


def test_tied_scores_rank_in_box_order() -> None:
    """bf16 logits tie: the ranking must not depend on how a sort happens to break ties."""
    args = (torch.tensor([[True]]), torch.tensor([[True]]), torch.tensor([[PEOPLE]]))
    logits = torch.full((1, 40, 1), 0.5)  # every box tied; only box 39 is a positive
    targets = torch.zeros(1, 40, 1)
    targets[0, 39, 0] = 1.0
    assert grounding_recall(logits, targets, *args)["recall@10"] == 0.0
    targets[0, 9, 0] = 1.0  # the tenth box in box order
    assert grounding_recall(logits, targets, *args)["recall@10"] == 100.0
    assert grounding_recall(logits, targets, *args)["recall@5"] == 0.0


def test_cutoff_larger_than_box_count_and_numpy_inputs() -> None:
    logits = np.array([[[0.3], [0.2]]], dtype=np.float32)
    targets = np.array([[[0.0], [1.0]]], dtype=np.float32)
    scores = grounding_recall(logits, targets, np.array([[True]]), np.array([[True]]), np.array([[OTHER]]))
    assert (scores["recall@1"], scores["recall@5"], scores["recall@10"]) == (0.0, 100.0, 100.0)


def naive_counts(logits, targets, entity_mask, has_gt, types, box_mask, ks=(1, 5, 10)) -> Counter:
    """Entity by entity: sort the real boxes by logit and look at the first k (the random test data has no
    ties, whose order torch.topk leaves unspecified)."""
    counts: Counter = Counter()
    for b in range(logits.shape[0]):
        real = [n for n in range(logits.shape[1]) if box_mask[b, n]]
        for e in range(logits.shape[2]):
            if not (entity_mask[b, e] and has_gt[b, e]):
                continue
            order = sorted(real, key=lambda n: -float(logits[b, n, e]))
            entity_types = [t for t in range(len(ENTITY_TYPES)) if (int(types[b, e]) >> t) & 1]
            reachable = any(targets[b, n, e] > 0 for n in real)
            counts["count"] += 1
            counts["reachable"] += reachable
            for t in entity_types:
                counts["count", t] += 1
                counts["reachable", t] += reachable
            for k in ks:
                hit = any(targets[b, n, e] > 0 for n in order[:k])
                counts[k] += hit
                for t in entity_types:
                    counts[k, t] += hit
    return counts


def test_matches_naive_loop_over_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    metric, evens, odds = GroundingRecall(), GroundingRecall(), GroundingRecall()
    expected: Counter = Counter()
    for step in range(5):
        batch, boxes, entities = 4, 17, 5
        logits = torch.randn(batch, boxes, entities, generator=generator)
        targets = (torch.rand(batch, boxes, entities, generator=generator) < 0.08).float()
        box_mask = torch.arange(boxes)[None] < torch.randint(3, boxes + 1, (batch, 1), generator=generator)
        entity_mask = torch.rand(batch, entities, generator=generator) < 0.8
        has_gt = torch.rand(batch, entities, generator=generator) < 0.9
        types = torch.randint(1, 256, (batch, entities), generator=generator)
        metric.update(logits, targets, entity_mask, has_gt, types, box_mask)
        (odds if step % 2 else evens).update(logits, targets, entity_mask, has_gt, types, box_mask)
        expected += naive_counts(logits, targets, entity_mask, has_gt, types, box_mask)
    scores = metric.compute()
    odds.add(evens)  # two processes' shares of the batches, added
    assert odds.compute() == scores
    assert scores["count"] == expected["count"]
    assert scores["upperBound"] == pytest.approx(100 * expected["reachable"] / expected["count"])
    for k in (1, 5, 10):
        assert scores[f"recall@{k}"] == pytest.approx(100 * expected[k] / expected["count"])
    for t, name in enumerate(ENTITY_TYPES):
        per_type = scores["perType"][name]
        assert per_type["count"] == expected["count", t]
        assert per_type["upperBound"] == pytest.approx(100 * expected["reachable", t] / expected["count", t])
        for k in (1, 5, 10):
            assert per_type[f"recall@{k}"] == pytest.approx(100 * expected[k, t] / expected["count", t])


def test_nothing_scored_is_an_error() -> None:
    with pytest.raises(DataError, match="no entities"):
        GroundingRecall().compute()
    with pytest.raises(ValueError, match="positive"):
        GroundingRecall(ks=(0,))
    with pytest.raises(ValueError, match="cut-offs differ"):
        GroundingRecall().add(GroundingRecall(ks=(1,)))

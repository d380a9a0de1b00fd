"""Losses against a naive scalar re-computation of binary cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch

from ban.engine.loss import grounding_loss, vqa_loss
from ban.engine.tasks import GroundingTask


def bce(x: float, t: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_vqa_loss_sums_answers_and_averages_samples():
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1.0, 0.3, 0.0], [0.6, 0.9, 0.0]])
    expected = sum(bce(x, t) for row, trow in zip(logits.tolist(), targets.tolist(), strict=True)
                   for x, t in zip(row, trow, strict=True)) / 2
    assert vqa_loss(logits, targets, 2).item() == pytest.approx(expected)
    # the reference's form: mean BCE over all entries × number of answers
    reference = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets) * 3
    assert vqa_loss(logits, targets, 2).item() == pytest.approx(reference.item())


def test_vqa_loss_divides_by_the_denominator_it_is_given():
    """The trainer passes 1 (a sum) and scales by the global batch itself: the denominator is not the batch's B."""
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1.0, 0.3, 0.0], [0.6, 0.9, 0.0]])
    total = sum(bce(x, t) for row, trow in zip(logits.tolist(), targets.tolist(), strict=True)
                for x, t in zip(row, trow, strict=True))
    assert vqa_loss(logits, targets, 1).item() == pytest.approx(total)
    assert vqa_loss(logits, targets, 4).item() == pytest.approx(total / 4)  # half the per-sample mean (B = 2)


def test_grounding_loss_leaves_out_padded_entities():
    # B=1, G=1, N=2 boxes, E=2 entity slots, the second slot padded (its logits are -99 but must not count)
    logits = torch.tensor([[[[1.0, -99.0], [-0.5, -99.0]]]])
    targets = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    mask = torch.tensor([[True, False]])
    expected = bce(1.0, 1.0) + bce(-0.5, 0.0)
    assert grounding_loss(logits, targets, mask).item() == pytest.approx(expected)


def test_grounding_loss_trains_the_first_glimpse_as_evaluation_scores_it():
    first = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]])  # [B=1, N=2, E=2]
    logits = torch.stack([first, torch.full_like(first, 50.0)], dim=1)  # a second glimpse that must not count
    targets, mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.ones(1, 2, dtype=torch.bool)
    expected = bce(1.0, 1.0) + bce(-2.0, 0.0) + bce(0.5, 0.0) + bce(3.0, 1.0)
    assert grounding_loss(logits, targets, mask).item() == pytest.approx(expected)


def test_the_grounding_task_trains_only_on_entities_with_a_ground_truth_box():
    """A real entity slot whose phrase has no ground-truth box (has_ground_truth False) takes no part in the loss, as
    in the reference's train_flickr.py; the best validation epoch (PAPER.md §4) is the one of the best recall@1, the
    number the paper reports first, not another K."""
    task = GroundingTask.__new__(GroundingTask)  # the loss and the selection read only their arguments
    logits = torch.tensor([[[[1.0, 3.0], [-0.5, 2.0]]]])  # B=1, G=1, N=2 boxes, E=2 real entities
    batch = {"targets": torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), "entity_mask": torch.tensor([[True, True]]),
             "has_ground_truth": torch.tensor([[True, False]])}
    expected = bce(1.0, 1.0) + bce(-0.5, 0.0)
    assert task.loss_sum(logits, batch).item() == pytest.approx(expected)
    logits[..., 1] = -7.0  # the entity without ground truth: its logits change nothing
    assert task.loss_sum(logits, batch).item() == pytest.approx(expected)
    assert task.selection_score({"recall@1": 60.0, "recall@5": 85.0, "recall@10": 90.0}) == 60.0

"""Training losses, as the reference code computes them, summed over the batch.

The trainer takes the plain sums (:meth:`ban.engine.tasks.Task.loss_sum`) and divides them by the GLOBAL batch's
sample count itself, so that a batch split across processes gives, after DDP's gradient averaging, exactly the
gradient of the whole batch (:mod:`ban.engine.trainer`); the benchmark's VQA step divides by its batch size through
``vqa_loss``'s ``denominator`` (:func:`ban.engine.graphs.training_step`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor, denominator: int) -> torch.Tensor:
    """Binary cross-entropy with logits against soft targets, summed over answers and samples, ÷ ``denominator``.

    With ``denominator = B`` this is the reference's ``BCE(mean) × num_answers``: sum over answers, mean over batch.

    Args:
        logits: ``[B, A]`` answer logits.
        targets: ``[B, A]`` soft scores in [0, 1].
    """
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum") / denominator


def grounding_loss(logits: torch.Tensor, targets: torch.Tensor, entity_mask: torch.Tensor) -> torch.Tensor:
    """BCE with logits over every (box, entity) pair of the entities ``entity_mask`` keeps, summed (reference
    train_flickr.py, before its division by the batch size).

    Padded boxes carry logit −99 and target 0, so they add (almost exactly) nothing.

    Args:
        logits: ``[B, G, N, E]`` box × entity logits; the first glimpse's are trained, as evaluation scores them
            (grounding trains one glimpse; a run from before that refusal, with more, resumes as it trained).
        targets: ``[B, N, E]`` 1 where a box is a positive for the entity.
        entity_mask: ``[B, E]`` bool, True for the entities that count.
    """
    mask = entity_mask[:, None, :].expand_as(targets)
    return F.binary_cross_entropy_with_logits(logits[:, 0].float()[mask], targets.float()[mask], reduction="sum")

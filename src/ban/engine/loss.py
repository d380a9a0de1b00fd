"""Training losses, as the reference code computes them.

Both sum over the batch and divide by an explicit ``denominator``. The trainer takes the plain sum
(``denominator`` 1: :meth:`ban.engine.tasks.Task.loss_sum`) and divides it by the GLOBAL batch's sample count itself,
so that a batch split across processes gives, after DDP's gradient averaging, exactly the gradient of the whole
batch (:mod:`ban.engine.trainer`); the benchmark's step passes its batch size (:func:`ban.engine.graphs.training_step`).
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


def grounding_loss(
    logits: torch.Tensor, targets: torch.Tensor, entity_mask: torch.Tensor, denominator: int
) -> torch.Tensor:
    """BCE with logits over every (box, real entity) pair, summed, ÷ ``denominator`` (reference train_flickr.py).

    Padded boxes carry logit −99 and target 0, so they add (almost exactly) nothing; padded entity slots are
    left out.

    Args:
        logits: ``[B, G, N, E]`` box × entity logits (G = 1 for grounding) or ``[B, N, E]``.
        targets: ``[B, N, E]`` 1 where a box is a positive for the entity.
        entity_mask: ``[B, E]`` bool, True for real entities.
    """
    if logits.dim() == 4:
        logits = logits[:, 0]
    mask = entity_mask[:, None, :].expand_as(targets)
    return (
        F.binary_cross_entropy_with_logits(logits.float()[mask], targets.float()[mask], reduction="sum")
        / denominator
    )

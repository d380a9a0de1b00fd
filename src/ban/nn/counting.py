"""The counting module of Zhang, Hare & Prügel-Bennett (ICLR 2018), as BAN's reference code uses it.

n = ``num_objects`` (10): the n highest-scoring boxes are kept; the output is an (n + 1)-way soft one-hot of
the count, times a confidence.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ban import kernels
from ban.nn.shapes import expect_positive, expect_shape

_COUNT_EPSILON = 1e-20  # under the count's square root (the reference's): its gradient stays finite at zero


class _CompiledPiecewiseLinear(torch.autograd.Function):
    """f(x) from the normalised slopes ŵ [n + 1] in one pass each way (``ban/kernels/piecewise.cpp``), with the
    dense form's gradients; x float32 on the CPU."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, slopes: Tensor) -> Tensor:
        x, slopes = x.contiguous(), slopes.contiguous()
        ctx.save_for_backward(x, slopes)
        return kernels.compiled().piecewise_linear(x, slopes)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, slopes = ctx.saved_tensors
        grad_x, grad_slopes = kernels.compiled().piecewise_linear_backward(grad.contiguous(), x, slopes)
        return grad_x, grad_slopes


class PiecewiseLinear(nn.Module):
    """A monotone piecewise-linear map of [0, 1] onto [0, 1] with ``num_segments`` equal segments.

    ``weight`` [num_segments + 1] starts as ones with entry 0 set to 0; ``ŵ = |w| / Σ|w|`` are the segment
    slopes (entry 0 an offset), so f(0) = ŵ₀ = 0 and f(1) = 1. Written densely,
    ``f(x) = ŵ₀ + Σ_{k=1..n} ŵ_k · clamp(n·x − (k − 1), 0, 1)``, which equals the look-up formulation on
    [0, 1] but has no gather from a 17-entry table on the backward pass, which was slow on GPUs. The gradients
    are the look-up's too: on a knot n·x = m (0 < m < n) only the segment starting there passes it (ramp m + 1 at
    0), not the one ending there (ramp m, at 1: held constant); at x = 1 the last ramp does. Inside
    :func:`ban.kernels.enabled` a float32 CPU input takes a compiled kernel with the same gradients instead (no
    [..., n] tensor of ramps).
    """

    def __init__(self, num_segments: int = 16) -> None:
        super().__init__()
        expect_positive("num_segments", num_segments)
        self.num_segments = num_segments
        self.weight = nn.Parameter(torch.empty(num_segments + 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``weight`` ones with entry 0 set to 0: f is the identity on [0, 1]."""
        with torch.no_grad():
            self.weight.fill_(1)
            self.weight[0] = 0

    def forward(self, x: Tensor) -> Tensor:
        """x [...] with values in [0, 1] → f(x) [...]."""
        weight = self.weight if torch.finfo(self.weight.dtype).bits >= 32 else self.weight.float()  # a bf16 module's
        slopes = weight.abs()
        slopes = slopes / slopes.sum()  # normalised in float32 at least: bfloat16 put them 0.02 off
        if kernels.active() is not None and x.device.type == "cpu" and x.dtype == slopes.dtype == torch.float32:
            return _CompiledPiecewiseLinear.apply(x, slopes)
        steps = torch.arange(self.num_segments, device=x.device, dtype=x.dtype)
        offsets = self.num_segments * x.unsqueeze(-1) - steps  # [..., n]
        rising = (offsets < 1) | (steps == self.num_segments - 1)
        ramps = torch.where(rising, offsets.clamp(0, 1), torch.ones_like(offsets))  # a full ramp passes no gradient
        return slopes[0] + torch.matmul(ramps, slopes[1:].to(ramps.dtype))


def pairwise_iou(boxes: Tensor) -> Tensor:
    """boxes [B, n, 4] (x1, y1, x2, y2) → IoU [B, n, n] (with 1e-12 in the denominator; computed in float32 for a
    dtype where 1e-12 is zero, float16: empty padding boxes would give 0 / 0)."""
    expect_shape("boxes", boxes, (None, None, 4), "float")
    if torch.finfo(boxes.dtype).tiny > 1e-12:
        return pairwise_iou(boxes.float()).to(boxes.dtype)
    top_left = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    bottom_right = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    sides = (bottom_right - top_left).clamp(min=0)
    intersection = sides[..., 0] * sides[..., 1]
    extent = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    area = extent[..., 0] * extent[..., 1]
    return intersection / (area[:, :, None] + area[:, None, :] - intersection + 1e-12)


def soft_one_hot(count: Tensor, num_classes: int) -> Tensor:
    """count [B] in [0, num_classes − 1] → linear interpolation of one-hot(⌊c⌋) and one-hot(⌊c⌋ + 1) [B, C]."""
    count = count.clamp(min=0, max=num_classes - 1)
    low = count.detach().floor()
    fraction = count - low
    low_index = low.nan_to_num(0.0).long()  # a NaN count (diverged inputs) gives a NaN row, not a bad index
    high_index = (low_index + 1).clamp(max=num_classes - 1)
    # one-hot by comparison: F.one_hot checks the index range on the host (a device read inside a CUDA graph)
    classes = torch.arange(num_classes, device=count.device)
    low_hot = (low_index[:, None] == classes).to(count.dtype)
    high_hot = (high_index[:, None] == classes).to(count.dtype)
    return (1 - fraction)[:, None] * low_hot + fraction[:, None] * high_hot


class CountingModule(nn.Module):
    """Counts from attention scores over boxes, de-duplicating overlapping proposals.

    16 piecewise-linear functions f₀…f₁₅ are kept (as in the reference checkpoints); f₀…f₇ are used, the rest
    are frozen (``requires_grad`` off): no gradient ever reaches them, and so every trainable parameter of a
    model gets one in every step (what DDP without ``find_unused_parameters`` needs).
    """

    NUM_FUNCTIONS = 16
    USED_FUNCTIONS = 8

    def __init__(self, num_objects: int = 10) -> None:
        super().__init__()
        expect_positive("num_objects", num_objects)
        self.num_objects = num_objects
        self.functions = nn.ModuleList(PiecewiseLinear(16) for _ in range(self.NUM_FUNCTIONS))
        self.functions[self.USED_FUNCTIONS:].requires_grad_(False)

    def forward(self, boxes: Tensor, scores: Tensor) -> Tensor:
        """boxes [B, N, ≥4] normalised x1, y1, x2, y2 (…); scores [B, N] pre-sigmoid (−inf for padded boxes)
        → [B, num_objects + 1], the confidence-weighted soft one-hot count, in the scores' dtype (computed in
        float32 for float16 and bfloat16 scores: float16 would round the square root's epsilon to 0, an infinite
        gradient, and bfloat16's 8 bits of precision put its counts 0.02 off float32's)."""
        if boxes.dim() != 3 or boxes.shape[-1] < 4 or not boxes.is_floating_point():
            raise ValueError(f"boxes: expected shape [B, N, ≥4] (x1, y1, x2, y2, …) with float values, got shape "
                             f"{list(boxes.shape)} of {boxes.dtype}")
        expect_shape("scores", scores, boxes.shape[:2], "float")
        if torch.finfo(scores.dtype).bits < 32:
            return self._count(boxes, scores.float()).to(scores.dtype)
        return self._count(boxes, scores)

    def _count(self, boxes: Tensor, scores: Tensor) -> Tensor:
        """:meth:`forward` of checked inputs, computed in the scores' dtype."""
        boxes = boxes[..., :4].to(scores.dtype)  # boxes made in numpy are float64
        f = self.functions
        boxes, scores = self._keep_top_scoring(boxes, scores)
        attention = torch.sigmoid(scores)  # [B, n]
        relevancy = attention[:, :, None] * attention[:, None, :]  # [B, n, n]
        distance = 1 - pairwise_iou(boxes)  # [B, n, n]

        score = f[0](relevancy) * f[1](distance)
        dedup_score = f[3](relevancy) * f[4](distance)
        similarity = self._similarity(dedup_score, attention)  # [B, n, n]
        row_sims = similarity.sum(dim=2)  # [B, n]
        score = score / (row_sims[:, :, None] * row_sims[:, None, :])
        correction = f[0](attention * attention) / row_sims
        count = (score.sum(dim=(1, 2)) + correction.sum(dim=1) + _COUNT_EPSILON).sqrt()
        one_hot = soft_one_hot(count, self.num_objects + 1)

        attention_confidence = (f[5](attention) - 0.5).abs().mean(dim=1)
        distance_confidence = (f[6](distance) - 0.5).abs().mean(dim=(1, 2))
        confidence = f[7](attention_confidence + distance_confidence)
        return one_hot * confidence[:, None]

    def _keep_top_scoring(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Keep the n best boxes; fewer than n are padded with empty boxes of score −inf. A kept box of score −inf
        (a padded box) is made empty whatever its coordinates: zero boxes, as the reference pads with."""
        missing = self.num_objects - scores.shape[1]
        if missing > 0:
            boxes = F.pad(boxes, (0, 0, 0, missing))
            scores = F.pad(scores, (0, missing), value=float("-inf"))
        scores, index = scores.topk(self.num_objects, dim=1)
        boxes = boxes.gather(1, index[:, :, None].expand(-1, -1, boxes.shape[2]))
        return boxes.masked_fill(scores.isneginf().unsqueeze(-1), 0), scores

    def _similarity(self, dedup_score: Tensor, attention: Tensor) -> Tensor:
        """``sim[j, k] = Π_i f₂(1 − |E[i, j] − E[i, k]|) · f₂(1 − |a_j − a_k|)`` → [B, n, n]."""
        f2 = self.functions[2]
        score_diff = (dedup_score[:, :, :, None] - dedup_score[:, :, None, :]).abs()  # [B, i, j, k]
        attention_diff = (attention[:, :, None] - attention[:, None, :]).abs()  # [B, j, k]
        return f2(1 - score_diff).prod(dim=1) * f2(1 - attention_diff)

"""Dropout with independent Bernoulli masks, drawn quickly on the CPU.

PyTorch's CPU dropout draws its mask one Mersenne-Twister number per element (on AMD CPUs, where MKL's vector
generator is not used), which made the masks a fifth of BAN's CPU training step (benchmarks/RESULTS.md). Here the
mask comes from the same generator, 64 random bits at a time: each element owns 32 of them and is kept when they
fall under ``round(keep · 2³²)``. The keep probability is ``keep`` to within 2⁻³³ (finer than CUDA's own dropout,
which compares a float32 uniform with the float32 ``keep``), every element is independent of every other, and the
seed decides the masks. On other devices ``F.dropout`` (a fused kernel there) runs unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_WORD_BITS = 32


def keep_mask(shape: torch.Size | tuple[int, ...], keep: float, generator: torch.Generator | None = None) -> Tensor:
    """A CPU bool tensor of ``shape``, each element independently True with probability ``keep`` ∈ (0, 1)."""
    count = math.prod(shape)
    words = torch.empty((count + 1) // 2, dtype=torch.int64).random_(-(2**63), None, generator=generator)
    chunks = words.view(torch.int32)[:count]  # uniform over all 2³² values, two per 64-bit word
    threshold = min(round(keep * 2**_WORD_BITS), 2**_WORD_BITS - 1) - 2 ** (_WORD_BITS - 1)
    return (chunks < threshold).view(shape)


def scaled_keep_mask(shape: torch.Size | tuple[int, ...], keep: float, dtype: torch.dtype) -> Tensor:
    """``1 / keep`` where :func:`keep_mask` keeps, else 0: the factor inverted dropout multiplies by [shape]."""
    kept, dropped = torch.tensor(1.0 / keep, dtype=dtype), torch.tensor(0.0, dtype=dtype)
    return torch.where(keep_mask(shape, keep), kept, dropped)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (kept elements scaled by ``1 / (1 − p)``) whose CPU masks come from :func:`keep_mask`."""

    def forward(self, x: Tensor) -> Tensor:
        """x [...] → [...] (the identity in eval mode)."""
        if not self.training or x.device.type != "cpu" or not 0.0 < self.p < 1.0 or self.inplace:
            return F.dropout(x, self.p, self.training, self.inplace)
        return x * scaled_keep_mask(x.shape, 1.0 - self.p, x.dtype)  # the backward multiplies by the same factor

"""Dropout with independent Bernoulli masks, drawn quickly on the CPU.

PyTorch's CPU dropout draws its mask one Mersenne-Twister number per element (on AMD CPUs, where MKL's vector
generator is not used), which made the masks a fifth of BAN's CPU training step (benchmarks/RESULTS.md). Here each
element owns 32 random bits and is kept when they fall under ``round(keep · 2³²)``: the keep probability is
``keep`` to within 2⁻³³ (finer than CUDA's own dropout, which compares a float32 uniform with the float32 ``keep``)
and every element is independent of every other. The bits come from NumPy's SFC64 generator (about 2.5× faster per
bit than torch's CPU Mersenne Twister), one stream per mask seeded by a number drawn from torch's generator, so
``torch.manual_seed`` (and a checkpoint's saved RNG state) decide the masks. On other devices ``F.dropout`` (a
fused kernel there) runs unchanged. :meth:`Dropout.unscaled` leaves the ``1 / keep`` factor to the linear map that
follows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_WORD_BITS = 32


def keep_mask(shape: torch.Size | tuple[int, ...], keep: float, generator: torch.Generator | None = None) -> Tensor:
    """A CPU bool tensor of ``shape``, each element independently True with probability ``keep`` ∈ (0, 1).

    One number drawn from ``generator`` (torch's default generator when None) seeds the SFC64 stream of the mask.
    """
    count = math.prod(shape)
    seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator))
    words = np.random.SFC64(seed).random_raw((count + 1) // 2)  # 64 bits → two 32-bit values
    threshold = min(round(keep * 2**_WORD_BITS), 2**_WORD_BITS - 1) - 2 ** (_WORD_BITS - 1)
    return torch.from_numpy(words.view(np.int32)[:count] < threshold).view(shape)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (kept elements scaled by ``1 / (1 − p)``) whose CPU masks come from :func:`keep_mask`."""

    def forward(self, x: Tensor) -> Tensor:
        """x [...] → [...] (the identity in eval mode)."""
        if not self._draws_on_cpu(x):
            return F.dropout(x, self.p, self.training, self.inplace)
        zeroed, factor = self._zero_dropped(x)
        return zeroed.mul_(factor)  # the backward multiplies by the same mask and factor

    def unscaled(self, x: Tensor) -> tuple[Tensor, float]:
        """Dropout whose ``1 / (1 − p)`` a following linear map applies to its output instead: x [...] →
        (x with the dropped elements zeroed [...], the factor the caller owes). ``linear(d) · f`` equals
        ``linear(self(x))`` and saves a pass over x. Under CPU autocast the result is already in the autocast
        dtype (the product would cast it anyway). In eval mode or off the CPU: ``(self(x), 1.0)``.
        """
        if not self._draws_on_cpu(x):
            return self(x), 1.0
        zeroed, factor = self._zero_dropped(x)
        if torch.is_autocast_enabled("cpu"):
            zeroed = zeroed.to(torch.get_autocast_dtype("cpu"))
        return zeroed, factor

    def _zero_dropped(self, x: Tensor) -> tuple[Tensor, float]:
        """(x times a :func:`keep_mask` — a product with the bool mask, faster than ``torch.where`` on the CPU —
        and ``1 / keep``)."""
        keep = 1.0 - self.p
        return x * keep_mask(x.shape, keep), 1.0 / keep

    def _draws_on_cpu(self, x: Tensor) -> bool:
        return self.training and x.device.type == "cpu" and 0.0 < self.p < 1.0 and not self.inplace

"""Dropout with independent Bernoulli masks, drawn quickly on the CPU.

PyTorch's CPU dropout draws its mask one Mersenne-Twister number per element (on AMD CPUs, where MKL's vector
generator is not used), which made the masks a fifth of BAN's CPU training step (benchmarks/RESULTS.md). Here each
element owns 32 random bits and is kept when they fall under ``round(keep · 2³²)``: the keep probability is
``keep`` to within 2⁻³³ (finer than CUDA's own dropout, which compares a float32 uniform with the float32 ``keep``)
and every element is independent of every other. The bits are the SplitMix64 sequence of a seed drawn from torch's
generator (so ``torch.manual_seed`` and a checkpoint's saved RNG state decide the masks), computed from each word's
index: inside :func:`ban.kernels.enabled` a compiled kernel draws and applies the mask in one pass (and draws it
again in the backward pass instead of storing it), elsewhere NumPy computes the same bits. On other devices
``F.dropout`` (a fused kernel there) runs unchanged, as it does in :func:`ban.nn.capture.capture_safe`, under
``torch.compile`` and under ``torch.func``'s transforms (``vmap(..., randomness="different")`` then draws a mask per
sample). :meth:`Dropout.unscaled` leaves the ``1 / keep`` factor to the linear map that follows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ban import kernels
from ban.nn import capture

_WORD_BITS = 32
_CHUNK_WORDS = 1 << 16  # NumPy works through the words in cache-sized chunks
_GAMMA, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def draw_seed(generator: torch.Generator | None = None) -> int:
    """One number from ``generator`` (torch's default generator when None) that decides a mask."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator))


def keep_threshold(keep: float) -> int:
    """An element is kept when its 32 bits fall under this: ``round(keep · 2³²)``, at most 2³² − 1."""
    return min(round(keep * 2**_WORD_BITS), 2**_WORD_BITS - 1)


def splitmix64_words(seed: int, first: int, count: int) -> np.ndarray:
    """Words ``first … first + count − 1`` of the SplitMix64 sequence seeded with ``seed`` → uint64 [count]."""
    z = np.arange(first + 1, first + count + 1, dtype=np.uint64)
    z *= _GAMMA
    z += np.uint64(seed)
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def seeded_mask(shape: torch.Size | tuple[int, ...], seed: int, threshold: int) -> Tensor:
    """The keep mask of ``seed``: a CPU bool tensor of ``shape``; element i uses the low (even i) or high (odd i)
    32 bits of word i // 2 (what ``ban/kernels/dropout.cpp`` computes)."""
    count = math.prod(shape)
    mask = np.empty(count, dtype=bool)
    for first in range(0, (count + 1) // 2, _CHUNK_WORDS):
        words = splitmix64_words(seed, first, min(_CHUNK_WORDS, (count + 1) // 2 - first))
        start = 2 * first
        mask[start:start + 2 * len(words)] = (words.view(np.uint32) < threshold)[:count - start]
    return torch.from_numpy(mask).view(shape)


class _CompiledDropout(torch.autograd.Function):
    """``(x · mask · scale)`` in ``dtype``, one compiled pass; the backward draws the same mask again."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, seed: int, threshold: int, scale: float, dtype: torch.dtype) -> Tensor:
        ctx.mask, ctx.input_dtype = (seed, threshold, scale), x.dtype
        return _masked_scale(x, seed, threshold, scale, dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        return _masked_scale(grad, *ctx.mask, ctx.input_dtype), None, None, None, None


def _masked_scale(x: Tensor, seed: int, threshold: int, scale: float, dtype: torch.dtype) -> Tensor:
    out = torch.empty(x.shape, dtype=dtype)
    kernels.compiled().masked_scale_(x.contiguous(), out, seed, threshold, scale)
    return out


class Dropout(nn.Dropout):
    """``nn.Dropout`` (kept elements scaled by ``1 / (1 − p)``) whose CPU masks are :func:`seeded_mask`'s."""

    def forward(self, x: Tensor) -> Tensor:
        """x [...] → [...] (the identity in eval mode)."""
        if not self._draws_on_cpu(x):
            return F.dropout(x, self.p, self.training, self.inplace)
        return self._dropped(x, 1.0 / (1.0 - self.p), x.dtype)

    def unscaled(self, x: Tensor) -> tuple[Tensor, float]:
        """Dropout whose ``1 / (1 − p)`` a following linear map applies to its output instead: x [...] →
        (x with the dropped elements zeroed [...], the factor the caller owes). ``linear(d) · f`` equals
        ``linear(self(x))`` and saves a pass over x. Under CPU autocast the result is already in the autocast
        dtype (the product would cast it anyway). In eval mode or off the CPU: ``(self(x), 1.0)``.
        """
        if not self._draws_on_cpu(x):
            return self(x), 1.0
        return self._dropped(x, 1.0, kernels.compute_dtype(x)), 1.0 / (1.0 - self.p)

    def _dropped(self, x: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
        """x with a fresh mask's dropped elements zeroed, times ``scale``, in ``dtype``."""
        seed, threshold = draw_seed(), keep_threshold(1.0 - self.p)
        if kernels.active() is not None:
            return _CompiledDropout.apply(x, seed, threshold, scale, dtype)
        zeroed = x * seeded_mask(x.shape, seed, threshold)  # a product with the bool mask: faster than torch.where
        return (zeroed.mul_(scale) if scale != 1.0 else zeroed).to(dtype)

    def _draws_on_cpu(self, x: Tensor) -> bool:
        """Whether this call draws :func:`seeded_mask`'s bits; not in the capture-safe form (drawing a seed reads
        the generator's output on the host), which ``torch.compile`` also traces, nor under ``torch.func``'s
        transforms (one seed for the whole batch: ``vmap`` could not draw a mask per sample): ``F.dropout`` then."""
        return (self.training and x.device.type == "cpu" and 0.0 < self.p < 1.0 and not self.inplace
                and not capture.active() and not torch._C._are_functorch_transforms_active())

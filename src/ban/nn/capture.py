"""Layers that a CUDA graph can capture: inside :func:`capture_safe` (and while ``torch.compile`` traces) the
model issues no operation that reads device data on the host.

Some of BAN's layers do otherwise. On a GPU, ``nn.Embedding``'s CUDA backward sorts the token ids and reads the
number of distinct ids on the host when a batch has more than 3,072 of them (256 questions × 14 tokens do), which
a capturing stream refuses; :func:`embedding` adds the rows' gradients with ``index_add_`` instead (atomic adds:
the order of the float32 sums, so the last bits, may vary from run to run). ``nn.GRU`` runs cuDNN's recurrence,
whose capture is not relied on; :func:`ban.nn.gru.gru_sequence` computes the same recurrence with plain products.
On the CPU, :class:`ban.nn.dropout.Dropout` draws its mask's seed on the host; here it runs ``F.dropout``.
The packing of real boxes needs their indices from the host too (``real_rows`` of
:meth:`ban.models.BanForVQA.forward`, made by :func:`ban.engine.graphs.packed_rows`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_CAPTURE_SAFE: ContextVar[bool] = ContextVar("ban_capture_safe", default=False)


@contextlib.contextmanager
def capture_safe() -> Iterator[None]:
    """Within this block the layers take their capture-safe form (on every device)."""
    token = _CAPTURE_SAFE.set(True)
    try:
        yield
    finally:
        _CAPTURE_SAFE.reset(token)


def active() -> bool:
    """Whether the layers take their capture-safe form: inside :func:`capture_safe`, and while ``torch.compile``
    traces them (its graphs then hold the same operations: no graph break at ``nn.GRU``, no host read)."""
    return torch.compiler.is_compiling() or _CAPTURE_SAFE.get()


class _AddedRowsEmbedding(torch.autograd.Function):
    """``weight[tokens]`` whose backward adds each token's gradient row into a zero table (no sort, no host read);
    the padding row's gradient stays zero, as ``nn.Embedding(padding_idx=…)`` keeps it."""

    @staticmethod
    def forward(ctx: Any, tokens: Tensor, weight: Tensor, padding_index: int) -> Tensor:
        ctx.save_for_backward(tokens)
        ctx.table_shape, ctx.table_dtype, ctx.padding_index = weight.shape, weight.dtype, padding_index
        return F.embedding(tokens, weight, padding_index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        (tokens,) = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1]).to(ctx.table_dtype)
        grad_weight = rows.new_zeros(ctx.table_shape).index_add_(0, tokens.reshape(-1), rows)
        grad_weight[ctx.padding_index] = 0
        return None, grad_weight, None


def embedding(tokens: Tensor, weight: Tensor, padding_index: int) -> Tensor:
    """tokens [...] int64, weight [V, D] → [..., D]; the function of ``F.embedding(tokens, weight,
    padding_index)`` with a capture-safe backward."""
    return _AddedRowsEmbedding.apply(tokens, weight, padding_index)

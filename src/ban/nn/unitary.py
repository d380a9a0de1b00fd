"""Unitary attention (the baseline that BAN generalises): attention over boxes from one
question vector, ``α = softmax(Pᵀ(σ(Uᵀx·1ᵀ) ∘ σ(VᵀY)))``, with G glimpses."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ban.nn.bilinear import LowRankBilinearPooling, box_mask_from_features
from ban.nn.shapes import expect_dtype_fits, expect_positive, expect_shape


class UnitaryAttention(nn.Module):
    """G attention distributions over the N boxes, from one question vector each."""

    def __init__(self, v_features: int, q_features: int, hidden: int, num_glimpses: int, dropout: float = 0.2):
        super().__init__()
        expect_positive("num_glimpses", num_glimpses)
        self.num_glimpses = num_glimpses
        self.scores = LowRankBilinearPooling(q_features, v_features, hidden, num_glimpses, dropout)

    def forward(self, v: Tensor, q: Tensor, box_mask: Tensor | None = None) -> Tensor:
        """v [B, N, Dv], q [B, Dq], box_mask [B, N] bool (default: from v's zero rows) → attention [B, G, N]
        (softmax over boxes; its logits and softmax in the weights' dtype, float32 under autocast)."""
        expect_shape("v", v, (None, None, self.scores.y_proj.in_features), "float")
        batch, boxes = v.shape[:2]
        expect_shape("q", q, (batch, self.scores.x_proj.in_features), "float")
        expect_dtype_fits("v", v, self.scores.y_proj.dtype)
        expect_dtype_fits("q", q, self.scores.x_proj.dtype)
        if box_mask is None:
            box_mask = box_mask_from_features(v)
        expect_shape("box_mask", box_mask, (batch, boxes), "bool")
        logits = self.scores(q.unsqueeze(1), v).to(self.scores.x_proj.dtype)  # [B, N, G]
        logits = logits.masked_fill(~box_mask.unsqueeze(-1), float("-inf"))
        return F.softmax(logits, dim=1).transpose(1, 2)

    @staticmethod
    def attend(v: Tensor, attention: Tensor) -> Tensor:
        """v [B, N, Dv], attention [B, G, N] → attended box features, glimpses concatenated [B, G·Dv]."""
        return attention.matmul(v).flatten(1)

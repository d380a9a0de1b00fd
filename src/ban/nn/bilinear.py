"""Low-rank bilinear pooling, bilinear attention maps and bilinear attention pooling (Kim, Jun & Zhang,
NeurIPS 2018, arXiv 1805.07932).

Notation of the docstrings: B batch, N boxes, L tokens, G glimpses, K rank of the attention's bilinear form
(``rank_factor · hidden``), H hidden size, Dv box-feature width, Dq token-state width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ban.nn.dropout import Dropout
from ban.nn.fc import FCStack, WeightNormLinear, weight_normalized
from ban.nn.shapes import expect_dtype_fits, expect_features, expect_positive, expect_shape


class LowRankBilinearPooling(nn.Module):
    """``f = Pᵀ(σ(Uᵀx) ∘ σ(Vᵀy))`` — low-rank bilinear pooling of two vectors (Kim et al. 2017).

    U and V are weight-normalised projections to the rank ``rank``; P pools the rank down to ``out_features``.
    """

    def __init__(self, x_features: int, y_features: int, rank: int, out_features: int, dropout: float = 0.0):
        super().__init__()
        self.x_proj = FCStack([x_features, rank], "relu", dropout)
        self.y_proj = FCStack([y_features, rank], "relu", dropout)
        self.pool = WeightNormLinear(rank, out_features)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x [..., Dx], y [..., Dy] (leading dimensions broadcastable) → [..., out_features]."""
        for name, tensor, projection in (("x", x, self.x_proj), ("y", y, self.y_proj)):
            expect_features(name, tensor, projection.in_features)
            expect_dtype_fits(name, tensor, projection.dtype)
        try:
            torch.broadcast_shapes(x.shape[:-1], y.shape[:-1])
        except RuntimeError:
            raise ValueError(f"x {list(x.shape)} and y {list(y.shape)}: the leading dimensions do not "
                             "broadcast") from None
        return self.pool(self.x_proj(x) * self.y_proj(y))


def box_mask_from_features(features: Tensor) -> Tensor:
    """Boxes whose feature row is all zeros are padding. features [B, N, Dv] → mask [B, N] (True = real)."""
    return features.abs().sum(dim=-1) != 0


def real_box_rows(box_mask: Tensor) -> Tensor:
    """Flat indices [R] of the real boxes of box_mask [B, N] (True = real), for :class:`PackedBoxes`.
    Computing them waits for the device (R is data-dependent): a model does it once per forward pass, or takes
    them from the host (:func:`ban.engine.graphs.packed_rows`)."""
    return box_mask.flatten().nonzero().squeeze(1)


class PackedBoxes:
    """The real boxes of a padded batch, gathered once for every projection of them.

    features [B, N, Dv]; rows [R ≤ B·N] int64 = the flat indices of every real box (:func:`real_box_rows` of the
    box mask), optionally followed by distinct indices of padded boxes (a static length for CUDA graphs). A padded
    box's row of a projection holds zeros, or its projection when its index is listed (always so with R = B·N, when
    nothing is gathered and every row is projected): BAN's zero attention ignores padded rows either way.
    """

    def __init__(self, features: Tensor, rows: Tensor) -> None:
        self.batch, self.boxes = features.shape[:2]
        total = self.batch * self.boxes
        expect_shape("real_rows", rows, (None,), "int64")
        if rows.numel() > total:
            raise ValueError(f"real_rows: {rows.numel()} indices for {total} box slots (B·N = {self.batch}·"
                             f"{self.boxes}); expected at most one per slot")
        self.features, self.rows = features, rows
        self.packed = None if rows.numel() == total else features.flatten(0, 1).index_select(0, rows)  # [R, Dv]

    def project(self, projection: Callable[[Tensor], Tensor]) -> Tensor:
        """``projection`` of the listed boxes → [B, N, out], the other rows zero."""
        if self.packed is None:
            return projection(self.features)
        packed = projection(self.packed)  # [R, out]
        projected = packed.new_zeros(self.batch * self.boxes, packed.shape[-1]).index_copy_(0, self.rows, packed)
        return projected.unflatten(0, (self.batch, self.boxes))


def project_real_boxes(projection: Callable[[Tensor], Tensor], features: Tensor,
                       rows: Tensor | PackedBoxes) -> Tensor:
    """``projection`` of the real boxes only; the rows of padded boxes are zero (or, for padded boxes ``rows``
    lists, their projection).

    features [B, N, Dv], rows: the real boxes' flat indices [R] as :class:`PackedBoxes` takes them, or a
    :class:`PackedBoxes` of these features (gathered already) → [B, N, out]. BAN gives padded boxes zero attention,
    so what their rows hold never reaches an output or a gradient: packing computes the same function and skips
    the padded share of the largest matrix products (about two thirds with bottom-up's 10–100 boxes per image,
    padded to the batch's largest count).
    """
    packed = rows if isinstance(rows, PackedBoxes) else PackedBoxes(features, rows)
    return packed.project(projection)


class BilinearAttentionMap(nn.Module):
    """G bilinear attention maps sharing U and V (the reference code's ``BiAttention``).

    ``logits[b,g,i,j] = Σ_k p[g,k] · σ(Uᵀv_i)_k · σ(Vᵀq_j)_k + bias[g]``, with the per-glimpse vectors
    ``p = g_p · p_v / ‖p_v‖_F`` (one gain over all glimpses). Padded boxes get ``mask_value``; the softmax runs
    over each glimpse's whole N·L grid (a sample without a real box has no distribution: NaN, which reaches every
    shared weight's gradient even when that sample is left out of the loss; drop it from the batch).

    Parameters: ``v_proj``, ``q_proj`` (FC → K, ReLU, input dropout), ``glimpse_weight_v`` [G, K],
    ``glimpse_weight_g`` [], ``glimpse_bias`` [G]. Dropout ``attention_dropout`` applies to σ(Uᵀv) only.
    """

    def __init__(
        self,
        v_features: int,
        q_features: int,
        hidden: int,
        num_glimpses: int,
        rank_factor: int = 3,
        dropout: float = 0.2,
        attention_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        expect_positive("num_glimpses", num_glimpses)
        rank = rank_factor * hidden
        self.num_glimpses = num_glimpses
        self.v_proj = FCStack([v_features, rank], "relu", dropout)
        self.q_proj = FCStack([q_features, rank], "relu", dropout)
        self.attention_dropout = Dropout(attention_dropout)
        self.glimpse_weight_v = nn.Parameter(torch.empty(num_glimpses, rank))
        self.glimpse_weight_g = nn.Parameter(torch.empty(()))
        self.glimpse_bias = nn.Parameter(torch.empty(num_glimpses))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The glimpse parameters as the reference draws them: ``glimpse_weight_v`` and ``glimpse_bias`` standard
        normal, the gain the initial norm (so p starts as ``glimpse_weight_v``). ``v_proj`` and ``q_proj`` reset
        their own."""
        with torch.no_grad():
            self.glimpse_weight_v.normal_()
            self.glimpse_weight_g.copy_(self.glimpse_weight_v.norm())
            self.glimpse_bias.normal_()

    @property
    def glimpse_weight(self) -> Tensor:
        """The weight-normalised per-glimpse vectors p [G, K]."""
        return weight_normalized(self.glimpse_weight_v, self.glimpse_weight_g)

    def logits(
        self, v: Tensor, q: Tensor, box_mask: Tensor | None = None, token_mask: Tensor | None = None,
        mask_value: float = float("-inf"), real_rows: Tensor | PackedBoxes | None = None,
    ) -> Tensor:
        """Masked attention logits.

        v [B, N, Dv], q [B, L, Dq], box_mask [B, N] bool (True = real box; default: the boxes whose feature row is
        not all zeros), token_mask [B, L] bool or None (True = real token) → logits [B, G, N, L].
        ``real_rows``: :func:`real_box_rows` of ``box_mask`` when the caller has them already (or their
        :class:`PackedBoxes` of v).
        """
        expect_shape("v", v, (None, None, self.v_proj.in_features), "float")
        expect_shape("q", q, (v.shape[0], None, self.q_proj.in_features), "float")
        expect_dtype_fits("v", v, self.v_proj.dtype)
        expect_dtype_fits("q", q, self.q_proj.dtype)
        batch, boxes, tokens = v.shape[0], v.shape[1], q.shape[1]
        if box_mask is None:
            box_mask = box_mask_from_features(v)
        expect_shape("box_mask", box_mask, (batch, boxes), "bool")
        if token_mask is not None:
            expect_shape("token_mask", token_mask, (batch, tokens), "bool")
        rows = real_box_rows(box_mask) if real_rows is None else real_rows
        v_rank = project_real_boxes(lambda real: self.attention_dropout(self.v_proj(real)), v, rows)  # [B, N, K]
        q_rank = self.q_proj(q)  # [B, L, K]
        # Scale the token side (usually the shorter one) by each glimpse's vector, then one product per example
        # against every (token, glimpse) row at once: the boxes are neither copied per glimpse nor summed back,
        # and the gradients of the scaling reduce over leading dims (token-major rows keep them adjacent).
        q_glimpses = q_rank.unsqueeze(2) * self.glimpse_weight.to(q_rank.dtype)  # [B, L, G, K]
        batch, tokens, glimpses, rank = q_glimpses.shape
        logits = torch.bmm(q_glimpses.reshape(batch, tokens * glimpses, rank), v_rank.transpose(1, 2))  # [B, L·G, N]
        logits = logits.unflatten(1, (tokens, glimpses)).permute(0, 2, 3, 1)  # [B, G, N, L]
        logits = logits + self.glimpse_bias[None, :, None, None]  # float32 from here on under autocast
        invalid = ~box_mask[:, None, :, None]
        if token_mask is not None:
            invalid = invalid | ~token_mask[:, None, None, :]
        return logits.masked_fill(invalid, mask_value)

    def forward(
        self, v: Tensor, q: Tensor, box_mask: Tensor | None = None, token_mask: Tensor | None = None,
        real_rows: Tensor | PackedBoxes | None = None,
    ) -> tuple[Tensor, Tensor]:
        """v [B, N, Dv], q [B, L, Dq], box_mask [B, N] bool (True = real box; default: the boxes whose feature row
        is not all zeros), token_mask [B, L] bool or None (True = real token; None: every token attends) →
        (attention [B, G, N, L], softmax over each glimpse's N·L grid, zero at masked places; logits [B, G, N, L],
        −inf at masked places). ``real_rows``: as in :meth:`logits`."""
        logits = self.logits(v, q, box_mask, token_mask, real_rows=real_rows)
        batch, glimpses, boxes, tokens = logits.shape
        attention = F.softmax(logits.reshape(batch, glimpses, boxes * tokens), dim=-1)
        return attention.reshape(batch, glimpses, boxes, tokens), logits


class BilinearAttentionPooling(nn.Module):
    """The joint feature under one attention map (the reference's ``BCNet`` with k = 1):

    ``f[b,k] = Σ_i Σ_j A[b,i,j] · σ(Uᵀv_i)_k · σ(Vᵀq_j)_k``, computed as ``Σ_j ((Aᵀ σ(Uᵀv)) ∘ σ(Vᵀq))_jk``
    — a small bilinear form per k, never a [B, N, L, K] tensor.
    """

    def __init__(self, v_features: int, q_features: int, hidden: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.v_proj = FCStack([v_features, hidden], "relu", dropout)
        self.q_proj = FCStack([q_features, hidden], "relu", dropout)

    def forward(self, v: Tensor, q: Tensor, attention: Tensor, real_rows: Tensor | PackedBoxes | None = None
                ) -> Tensor:
        """v [B, N, Dv], q [B, L, Dq], attention [B, N, L] → joint feature [B, H]. With ``real_rows`` (the
        :func:`real_box_rows` of the box mask, or their :class:`PackedBoxes` of v; padded boxes must have zero
        attention) only the real boxes are projected."""
        expect_shape("v", v, (None, None, self.v_proj.in_features), "float")
        expect_dtype_fits("v", v, self.v_proj.dtype)
        boxes_hidden = self.v_proj(v) if real_rows is None else project_real_boxes(self.v_proj, v, real_rows)
        return self.pool(boxes_hidden, q, attention)

    def pool(self, v_hidden: Tensor, q: Tensor, attention: Tensor) -> Tensor:
        """The same from already projected boxes: v_hidden [B, N, H] = σ(Uᵀv) → joint feature [B, H]."""
        batch, boxes = v_hidden.shape[:2]
        expect_shape("q", q, (batch, None, self.q_proj.in_features), "float")
        expect_shape("attention", attention, (batch, boxes, q.shape[1]), "float")
        expect_dtype_fits("q", q, self.q_proj.dtype)
        q_hidden = self.q_proj(q)  # [B, L, H]
        attended = torch.matmul(attention.transpose(1, 2).to(v_hidden.dtype), v_hidden)  # [B, L, H]
        return (attended * q_hidden).sum(dim=1)

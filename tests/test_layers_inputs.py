"""The layers check their inputs against the shapes their docstrings give, so that a model built from them fails
with the argument's name instead of broadcasting silently or failing inside a product; and they accept what their
docstrings promise."""

from __future__ import annotations

import pytest
import torch

from ban.nn import (
    BilinearAttentionMap,
    BilinearAttentionPooling,
    Classifier,
    CountingModule,
    FCStack,
    LowRankBilinearPooling,
    PiecewiseLinear,
    UnitaryAttention,
    WeightNormLinear,
    pairwise_iou,
)
from ban.nn.bilinear import real_box_rows
from ban.nn.gru import gru_sequence


def boxes(batch: int, count: int, extra: int = 0, seed: int = 0) -> torch.Tensor:
    """Random normalised boxes [batch, count, 4 + extra] (x1, y1, x2, y2, then ``extra`` more columns)."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(batch, count, 2, generator=generator) * 0.6
    side = torch.rand(batch, count, 2, generator=generator) * 0.4 + 0.05
    return torch.cat([corner, corner + side, torch.rand(batch, count, extra, generator=generator)], dim=-1)


POOLING = BilinearAttentionPooling(8, 6, 4)
MAP_INPUTS = (torch.randn(2, 3, 8), torch.randn(2, 4, 6), torch.tensor([[True, True, False], [True, False, False]]))


@pytest.mark.parametrize(("call", "message"), [
    # the whole [B, G, N, L] map where one glimpse's [B, N, L] is wanted: with B = G = 1 it used to give [1, 4, 3]
    (lambda: POOLING(torch.randn(1, 4, 8), torch.randn(1, 4, 6), torch.rand(1, 1, 4, 4)),
     r"attention: expected shape \[1, 4, 4\]"),
    (lambda: POOLING(torch.randn(2, 4, 8), torch.randn(2, 4, 6), torch.rand(1, 4, 4)),  # broadcast over B before
     r"attention: expected shape \[2, 4, 4\]"),
    (lambda: POOLING(torch.randn(2, 4, 8), torch.randn(2, 4, 6), torch.ones(2, 4, 4, dtype=torch.long)),
     r"attention: .* with float values"),
    (lambda: POOLING(torch.randn(2, 4, 7), torch.randn(2, 4, 6), torch.rand(2, 4, 4)),
     r"v: expected shape \[·, ·, 8\]"),
    (lambda: POOLING(torch.randn(2, 4, 8), torch.randn(3, 4, 6), torch.rand(2, 4, 4)),
     r"q: expected shape \[2, ·, 6\]"),
    (lambda: BilinearAttentionMap(8, 6, 4, 2)(torch.randn(8), torch.randn(2, 3, 6)), r"v: expected shape \[·, ·, 8\]"),
    (lambda: BilinearAttentionMap(8, 6, 4, 0), "num_glimpses must be positive"),
    (lambda: BilinearAttentionMap(8, 6, 4, 2)(torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 3, 6)),
     "v: torch.float64 values meet torch.float32 weights"),
    (lambda: POOLING(torch.randn(2, 4, 8), torch.randn(2, 4, 6).double(), torch.rand(2, 4, 4)), "q: torch.float64"),
    (lambda: UnitaryAttention(16, 8, 8, 2)(torch.randn(16), torch.randn(1, 8)), r"v: expected shape \[·, ·, 16\]"),
    (lambda: LowRankBilinearPooling(16, 8, 6, 3)(torch.randn(3, 15), torch.randn(3, 8)),
     r"x: expected shape \[\.\.\., 16\]"),
    (lambda: LowRankBilinearPooling(16, 8, 6, 3)(torch.randn(3, 16), torch.randn(3, 7)), r"y: expected shape"),
    (lambda: LowRankBilinearPooling(16, 8, 6, 3)(torch.randn(3, 16), torch.randn(4, 8)),
     r"x \[3, 16\] and y \[4, 8\]: the leading dimensions do not broadcast"),
    (lambda: CountingModule()(boxes(2, 12), torch.randn(1, 12)), r"scores: expected shape \[2, 12\]"),  # dropped one
    (lambda: CountingModule()(boxes(2, 12), torch.randn(2, 9)), r"scores: expected shape \[2, 12\]"),
    (lambda: CountingModule()(boxes(2, 12)[..., :3], torch.randn(2, 12)), r"boxes: expected shape \[B, N, ≥4\]"),
    (lambda: CountingModule()(torch.ones(2, 12, 4, dtype=torch.long), torch.randn(2, 12)), r"boxes: .* float values"),
    (lambda: WeightNormLinear(3, 2)(torch.randn(5, 4)),
     r"input: expected shape \[\.\.\., 3\] with float values, got shape \[5, 4\]"),
    (lambda: FCStack([4, 0]), "needs positive sizes"),
    (lambda: CountingModule(0), "num_objects must be positive, got 0"),  # counted NaN
    (lambda: PiecewiseLinear(0), "num_segments must be positive, got 0"),  # NaN
    # the linear layers failed inside the product ("expected m1 and m2 to have the same dtype")
    (lambda: WeightNormLinear(3, 2)(torch.randn(5, 3, dtype=torch.float64)),
     "input: torch.float64 values meet torch.float32 weights"),
    (lambda: FCStack([3, 4, 2])(torch.randn(5, 3, dtype=torch.float64)), "input: torch.float64 values meet"),
    (lambda: Classifier(3, 4, 2)(torch.randn(5, 3, dtype=torch.float64)), "input: torch.float64 values meet"),
    (lambda: WeightNormLinear(3, 2)(torch.ones(5, 3, dtype=torch.long)), r"input: .* with float values"),
    (lambda: FCStack([3, 4], dropout=-0.1), "dropout probability has to be between 0 and 1, but got -0.1"),
    # UnitaryAttention named its inner pooling's arguments (x, y) and its pooling's sizes
    (lambda: UnitaryAttention(8, 6, 5, 2)(torch.randn(2, 4, 8), torch.randn(2, 6, dtype=torch.float64)),
     "q: torch.float64 values meet torch.float32 weights"),
    (lambda: UnitaryAttention(8, 6, 5, 2)(torch.randn(2, 4, 8, dtype=torch.float64), torch.randn(2, 6)),
     "v: torch.float64 values meet torch.float32 weights"),
    (lambda: UnitaryAttention(8, 6, 5, 0), "num_glimpses must be positive, got 0"),
    (lambda: pairwise_iou(torch.rand(5, 4)), r"boxes: expected shape \[·, ·, 4\]"),  # an IndexError before
    (lambda: pairwise_iou(boxes(2, 5, extra=1)), r"boxes: expected shape \[·, ·, 4\]"),
    (lambda: gru_sequence(torch.nn.GRU(3, 4, num_layers=2, batch_first=True), torch.randn(2, 5, 3)), "one-layer"),
    (lambda: gru_sequence(torch.nn.GRU(3, 4, bidirectional=True, batch_first=True), torch.randn(2, 5, 3)),
     "unidirectional"),
    (lambda: gru_sequence(torch.nn.GRU(3, 4), torch.randn(2, 5, 3)), "batch_first"),
    # real_rows: int32 failed inside index_copy_; a bool mask or 2-D indices of B·N elements silently packed nothing
    (lambda: BilinearAttentionMap(8, 6, 4, 2)(*MAP_INPUTS, real_rows=real_box_rows(MAP_INPUTS[2]).int()),
     r"real_rows: expected shape \[·\] \(· any size\) with int64 values, got shape \[3\] of torch.int32"),
    (lambda: BilinearAttentionMap(8, 6, 4, 2)(*MAP_INPUTS, real_rows=MAP_INPUTS[2].flatten()),
     r"real_rows: .* with int64 values, got shape \[6\] of torch.bool"),
    (lambda: BilinearAttentionMap(8, 6, 4, 2)(*MAP_INPUTS, real_rows=MAP_INPUTS[2].nonzero()),
     r"real_rows: expected shape \[·\] .* got shape \[3, 2\]"),
    (lambda: POOLING(MAP_INPUTS[0], torch.randn(2, 4, 6), torch.rand(2, 3, 4), torch.arange(7)),
     r"real_rows: 7 indices for 6 box slots \(B·N = 2·3\)"),
])
def test_a_wrong_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_counting_takes_boxes_with_more_than_four_columns_and_uses_the_first_four():
    torch.manual_seed(0)
    counter = CountingModule()
    wide, scores = boxes(2, 12, extra=2), torch.randn(2, 12)
    assert torch.equal(counter(wide, scores), counter(wide[..., :4], scores))


def test_counting_in_float16_with_fewer_boxes_than_it_keeps_is_finite_and_close_to_float32():
    # its 1e-12 underflowed in float16: the empty padding boxes' IoU was 0 / 0 and every count NaN
    torch.manual_seed(0)
    counter = CountingModule()
    few, scores = boxes(2, 5), torch.randn(2, 5)
    reference = counter(few, scores)
    half = counter.half()(few.half(), scores.half())
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert torch.allclose(half.float(), reference, atol=3e-3)
    padded = torch.cat([few, torch.zeros(2, 3, 4)], dim=1).half()
    assert torch.isfinite(pairwise_iou(padded)).all()


def test_counting_bfloat16_scores_is_as_close_to_float64_as_its_output_can_be():
    """Counted in bfloat16 (8 bits of precision), the counts were 0.05 off float64's on the same inputs; counted in
    float32, only the output's rounding to bfloat16 is left (≤ 2⁻⁹ on values in [0, 1])."""
    torch.manual_seed(0)
    exact = CountingModule().double()
    for function in exact.functions:
        function.weight.data.uniform_(0, 2)
    counter = CountingModule().to(torch.float32)
    counter.load_state_dict(exact.state_dict())
    few, scores = boxes(64, 20).bfloat16(), (3 * torch.randn(64, 20)).bfloat16()
    counted = counter(few, scores)
    assert counted.dtype == torch.bfloat16
    assert (counted.double() - exact(few.double(), scores.double())).abs().max() <= 2 ** -9

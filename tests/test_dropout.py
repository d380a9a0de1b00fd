"""The fast CPU dropout draws independent Bernoulli masks with the reference's keep probability."""

import itertools
import math

import pytest
import torch
from torch import nn

from ban.nn.dropout import Dropout, draw_seed, keep_threshold, seeded_mask

COUNT = 2_000_000


def keep_mask(shape, keep, generator=None):
    """A mask of ``shape`` as Dropout draws it: each element True with probability ``keep``."""
    return seeded_mask(shape, draw_seed(generator), keep_threshold(keep))


@pytest.mark.parametrize("keep", [0.8, 0.5, 0.1, 0.999])
def test_keep_rate_matches_the_probability(keep):
    mask = keep_mask((COUNT,), keep, torch.Generator().manual_seed(0))
    sigma = math.sqrt(keep * (1 - keep) / COUNT)
    assert abs(mask.float().mean().item() - keep) < 5 * sigma


def test_masks_are_independent_across_elements_and_draws():
    generator = torch.Generator().manual_seed(1)
    first = keep_mask((COUNT,), 0.8, generator).float()
    second = keep_mask((COUNT,), 0.8, generator).float()
    bound = 5 / math.sqrt(COUNT)  # 5 σ of a correlation estimate between independent variables
    assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1].item()) < bound
    for lag in (1, 2, 3, 64):  # neighbours share a 64-bit word (lag 1) or its generator call
        assert abs(torch.corrcoef(torch.stack([first[:-lag], first[lag:]]))[0, 1].item()) < bound
    even, odd = first[0::2], first[1::2]  # the two halves of each word both follow the keep rate
    for half in (even, odd):
        assert abs(half.mean().item() - 0.8) < 5 * math.sqrt(0.16 / half.numel())


def test_same_seed_same_mask_and_odd_sizes():
    a = keep_mask((3, 5, 7), 0.8, torch.Generator().manual_seed(5))
    b = keep_mask((3, 5, 7), 0.8, torch.Generator().manual_seed(5))
    assert a.shape == (3, 5, 7) and a.dtype == torch.bool and torch.equal(a, b)


def test_dropout_scales_kept_elements_and_routes_the_gradient_through_the_same_mask():
    torch.manual_seed(0)
    layer = Dropout(0.2).train()
    x = torch.randn(64, 300, requires_grad=True)
    out = layer(x)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / 0.8)
    assert 0.7 < kept.float().mean() < 0.9
    out.backward(torch.ones_like(out))
    assert torch.allclose(x.grad, kept.float() / 0.8)


def test_dropout_is_the_identity_in_eval_mode_and_matches_nn_dropout_at_the_edges():
    x = torch.randn(10, 10)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), nn.Dropout(1.0).train()(x))
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_dropout_follows_the_global_seed():
    x = torch.randn(1000)
    torch.manual_seed(3)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(3)
    b = Dropout(0.5).train()(x)
    assert torch.equal(a, b)


def test_dropout_keeps_bfloat16():
    out = Dropout(0.5).train()(torch.ones(100, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and set(out.unique().tolist()) <= {0.0, 2.0}


def test_masks_of_consecutive_calls_come_from_different_streams():
    generator = torch.Generator().manual_seed(7)
    masks = [keep_mask((COUNT // 4,), 0.5, generator).float() for _ in range(4)]
    bound = 5 / math.sqrt(COUNT // 4)
    for first, second in itertools.pairwise(masks):
        assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1].item()) < bound


def test_unscaled_dropout_leaves_the_same_factor_to_the_linear_map():
    layer = Dropout(0.2).train()
    x = torch.randn(64, 300, requires_grad=True)
    torch.manual_seed(4)
    scaled = layer(x)
    torch.manual_seed(4)
    zeroed, factor = layer.unscaled(x)
    assert factor == pytest.approx(1 / 0.8) and torch.allclose(zeroed * factor, scaled)
    assert torch.equal(zeroed != 0, scaled != 0) and torch.equal(zeroed[zeroed != 0], x[zeroed != 0])
    zeroed.sum().backward()
    assert torch.equal(x.grad, (zeroed != 0).float())


def test_unscaled_dropout_under_autocast_is_in_bfloat16_and_the_identity_in_eval_mode():
    layer = Dropout(0.5).train()
    x = torch.randn(100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zeroed, _ = layer.unscaled(x)
    assert zeroed.dtype == torch.bfloat16
    kept = zeroed != 0
    assert torch.equal(zeroed[kept], x.to(torch.bfloat16)[kept])
    assert layer.eval().unscaled(x) == (x, 1.0)


@pytest.mark.parametrize("form", ["capture-safe", "compiled"])
def test_the_form_graphs_and_torch_compile_take_is_dropout_too(form):
    """Under capture (CUDA graphs) and torch.compile the layer is F.dropout, not the seeded CPU masks: the same
    distribution — kept elements scaled by 1 / (1 − p), the others exactly 0, the gradient through the same mask."""
    from contextlib import nullcontext

    from ban.nn import capture

    torch.manual_seed(0)
    layer = Dropout(0.2).train()
    x = torch.randn(200, 500, requires_grad=True)
    if form == "compiled":
        torch._dynamo.reset()
        run = torch.compile(layer, fullgraph=True)
    else:
        run = layer
    with capture.capture_safe() if form == "capture-safe" else nullcontext():
        out = run(x)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / 0.8)
    assert abs(kept.float().mean().item() - 0.8) < 5 * math.sqrt(0.8 * 0.2 / x.numel())
    out.backward(torch.ones_like(out))
    assert torch.allclose(x.grad, kept.float() / 0.8)


def test_under_vmap_each_sample_draws_its_own_mask_as_nn_dropout_does():
    """torch.func.vmap(..., randomness="different") refused the seed drawn for the whole batch ("different inplace
    randomness on an unbatched tensor"); under torch.func's transforms the layer is F.dropout."""
    from torch.func import vmap

    from ban.nn import FCStack

    torch.manual_seed(0)
    x = torch.ones(8, 300)
    out = vmap(Dropout(0.5).train(), randomness="different")(x)
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert all(not torch.equal(out[0], row) for row in out[1:])  # a mask per sample
    same = vmap(Dropout(0.5).train(), randomness="same")(x)
    assert all(torch.equal(same[0], row) for row in same[1:])
    stack = FCStack([300, 6], "relu", 0.5).train()
    assert vmap(stack, randomness="different")(x).shape == (8, 6)

"""The layers in someone else's model: what ``ban.nn`` exports, the meta device and ``reset_parameters`` (deferred
initialisation), mixed precision as docs/layers.md describes it."""

from __future__ import annotations

import pytest
import torch

import ban
import ban.nn
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

META = torch.device("meta")


def test_the_helpers_the_docs_name_are_exported():
    # docs/layers.md tells users to call real_box_rows(box_mask); the layers' docstrings name PackedBoxes
    from ban.nn.bilinear import PackedBoxes, real_box_rows

    assert {"real_box_rows", "PackedBoxes"} <= set(ban.nn.__all__)
    assert getattr(ban.nn, "real_box_rows", None) is real_box_rows
    assert getattr(ban.nn, "PackedBoxes", None) is PackedBoxes


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device=META)


LAYER_CALLS = {  # a layer and its call on meta inputs → the output shapes
    "WeightNormLinear": (lambda: WeightNormLinear(4, 3), lambda layer: [layer(_meta(2, 4))], [(2, 3)]),
    "FCStack": (lambda: FCStack([4, 5, 6], dropout=0.3), lambda layer: [layer(_meta(2, 7, 4))], [(2, 7, 6)]),
    "Classifier": (lambda: Classifier(4, 5, 6), lambda layer: [layer(_meta(2, 4))], [(2, 6)]),
    "BilinearAttentionMap": (
        lambda: BilinearAttentionMap(8, 6, 5, 2),
        lambda layer: list(layer(_meta(2, 5, 8), _meta(2, 3, 6), torch.ones(2, 5, dtype=torch.bool, device=META),
                                 real_rows=torch.arange(10, device=META))),
        [(2, 2, 5, 3), (2, 2, 5, 3)]),
    "BilinearAttentionPooling": (lambda: BilinearAttentionPooling(8, 6, 5),
                                 lambda layer: [layer(_meta(2, 5, 8), _meta(2, 3, 6), _meta(2, 5, 3))], [(2, 5)]),
    "LowRankBilinearPooling": (lambda: LowRankBilinearPooling(8, 6, 5, 3),
                               lambda layer: [layer(_meta(2, 1, 8), _meta(2, 4, 6))], [(2, 4, 3)]),
    "UnitaryAttention": (lambda: UnitaryAttention(8, 6, 5, 2), lambda layer: [layer(_meta(2, 5, 8), _meta(2, 6))],
                         [(2, 2, 5)]),
    "CountingModule": (lambda: CountingModule(), lambda layer: [layer(_meta(2, 5, 4), _meta(2, 5))], [(2, 11)]),
    "PiecewiseLinear": (lambda: PiecewiseLinear(), lambda layer: [layer(_meta(3, 4))], [(3, 4)]),
}


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", list(LAYER_CALLS))
def test_every_layer_runs_on_the_meta_device(name, training):
    # autocast has no meta device: the weight norm's float32 block and the dtype checks failed there
    make, call, shapes = LAYER_CALLS[name]
    outputs = call(make().to(META).train(training))
    assert [tuple(out.shape) for out in outputs] == shapes and all(out.is_meta for out in outputs)
    assert pairwise_iou(_meta(2, 5, 4)).shape == (2, 5, 5)


def test_a_model_runs_on_the_meta_device_with_real_rows():
    config = ban.BANConfig(num_tokens=40, num_answers=17, feature_dim=8, hidden_dim=16, word_dim=20, num_glimpses=2)
    model = ban.build_model(config).to(META)
    mask = torch.ones(2, 5, dtype=torch.bool, device=META)
    questions = torch.zeros(2, 4, dtype=torch.long, device=META)
    out = model(_meta(2, 5, 8), _meta(2, 5, 4), questions, mask, real_rows=torch.arange(10, device=META))
    assert out.logits.shape == (2, 17) and out.logits.is_meta


DEFERRED = {  # a layer, and its modules with parameters in the order its constructor initialises them
    "BilinearAttentionMap": (lambda: BilinearAttentionMap(8, 6, 5, 3),
                             lambda layer: [layer.v_proj.layers[0], layer.q_proj.layers[0], layer]),
    "PiecewiseLinear": (lambda: PiecewiseLinear(7), lambda layer: [layer]),
    "CountingModule": (lambda: CountingModule(), lambda layer: list(layer.functions)),
}


@pytest.mark.parametrize("name", list(DEFERRED))
def test_reset_parameters_after_meta_initialisation_draws_what_the_constructor_draws(name):
    """Built on the meta device and moved with to_empty, a module's parameters hold whatever memory held until
    ``reset_parameters()`` of its modules, called in the order the constructor initialises them, draws them: the
    same numbers as a module built on the CPU from the same seed."""
    make, owners = DEFERRED[name]
    torch.manual_seed(3)
    built = make()
    with META:
        deferred = make()
    deferred.to_empty(device="cpu")
    torch.manual_seed(3)
    for module in owners(deferred):
        module.reset_parameters()
    expected = built.state_dict()
    assert deferred.state_dict().keys() == expected.keys()
    for name, value in deferred.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert [p.requires_grad for p in deferred.parameters()] == [p.requires_grad for p in built.parameters()]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_the_attention_logits_and_softmax_stay_float32(dtype):
    """docs/layers.md: the products run in the autocast dtype, the attention logits and softmax in float32. The
    unitary attention's softmax ran in bf16: its distributions summed to 1 only to bf16's precision."""
    torch.manual_seed(0)
    unitary = UnitaryAttention(8, 6, 5, 2).eval()
    bilinear = BilinearAttentionMap(8, 6, 5, 2).eval()
    v, q = torch.randn(2, 30, 8) * 3, torch.randn(2, 6)
    with torch.no_grad():
        exact = unitary(v, q)
        with torch.autocast("cpu", dtype=dtype):
            attention = unitary(v, q)
            bilinear_attention, bilinear_logits = bilinear(v, q[:, None].expand(2, 4, 6))
    assert attention.dtype == bilinear_attention.dtype == bilinear_logits.dtype == torch.float32
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(attention, exact, rtol=0.05, atol=1e-3)

"""Gradients of the layers whose backward is written or arranged for speed, against finite differences and
against autograd through the textbook formulas (float64)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call, hessian, vmap
from torch.func import grad as gradient_of

from ban.nn import BilinearAttentionMap, WeightNormLinear
from ban.nn.fc import norm_scale


def test_norm_scale_gradient_matches_finite_differences():
    direction = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    gain = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    assert gradcheck(norm_scale, (direction, gain))


def test_second_derivatives_through_weight_normalisation_match_finite_differences():
    # a gradient penalty or a Hessian-vector product differentiates the gradient again: it used to miss the norm's
    # dependence on V without an error
    torch.manual_seed(0)
    layer = WeightNormLinear(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def outputs(direction, gain, inputs):
        return functional_call(layer, {"weight_v": direction, "weight_g": gain, "bias": layer.bias}, (inputs,))

    direction = layer.weight_v.detach().clone().requires_grad_()
    gain = layer.weight_g.detach().clone().requires_grad_()
    assert gradgradcheck(outputs, (direction, gain, x))


# torch.func's forward mode scripts a helper with torch.jit.script, which torch 2.13 reports as deprecated
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_the_hessian_through_weight_normalisation_is_the_textbook_formulas():
    # torch.func.hessian is forward mode over reverse mode: the norm scale's Function has no forward-mode rule
    torch.manual_seed(0)
    layer = WeightNormLinear(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64)

    def loss(direction):
        weights = {"weight_v": direction, "weight_g": layer.weight_g, "bias": layer.bias}
        return functional_call(layer, weights, (x,)).square().sum()

    def textbook(direction):
        return F.linear(x, layer.weight_g * direction / direction.norm(), layer.bias).square().sum()

    direction = layer.weight_v.detach()
    assert torch.allclose(hessian(loss)(direction), hessian(textbook)(direction), atol=1e-12)


def test_torch_func_per_sample_gradients_are_the_gradients_of_each_sample():
    torch.manual_seed(0)
    layer = WeightNormLinear(4, 3).double()
    params = {name: p.detach() for name, p in layer.named_parameters()}
    x = torch.randn(5, 4, dtype=torch.float64)

    def loss(weights, sample):
        return functional_call(layer, weights, (sample,)).square().sum()

    per_sample = vmap(gradient_of(loss), in_dims=(None, 0))(params, x.unsqueeze(1))
    for index in range(len(x)):
        expected = torch.autograd.grad(loss(dict(layer.named_parameters()), x[index : index + 1]),
                                       list(layer.parameters()))
        for (name, got), want in zip(per_sample.items(), expected, strict=True):
            assert torch.allclose(got[index], want, atol=1e-12), name


def test_outside_torch_func_the_scale_takes_its_one_pass_backward():
    # the autograd.Function whose backward is one pass over V, not autograd's norm (benchmarks/norm_scale_forms.py)
    direction = torch.randn(5, 7, requires_grad=True)
    scale = norm_scale(direction, torch.tensor(2.0, requires_grad=True))
    assert type(scale.grad_fn).__name__ == "_NormScaleBackward"


def test_weight_norm_linear_equals_the_materialised_weight_with_its_gradients():
    torch.manual_seed(0)
    layer = WeightNormLinear(6, 4).double()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    ours = layer(x)
    grads = torch.autograd.grad(ours.square().sum(), (x, layer.weight_v, layer.weight_g, layer.bias))
    v, g = layer.weight_v, layer.weight_g
    textbook = F.linear(x, g * v / torch.sqrt((v * v).sum()), layer.bias)
    expected = torch.autograd.grad(textbook.square().sum(), (x, v, g, layer.bias))
    assert torch.allclose(ours, textbook, atol=1e-12)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-12)


def test_attention_logits_gradient_matches_finite_differences():
    torch.manual_seed(0)
    layer = BilinearAttentionMap(5, 6, 2, 3, dropout=0.0, attention_dropout=0.0).double()
    v, q = torch.randn(2, 4, 5, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])

    wrapper = _MaskedLogits(layer, mask)
    names = ("inner.glimpse_weight_v", "inner.glimpse_weight_g", "inner.v_proj.layers.0.weight_v")

    def logits(v, q, *tensors):
        return functional_call(wrapper, dict(zip(names, tensors, strict=True)), (v, q))

    params = dict(wrapper.named_parameters())
    inputs = (v.requires_grad_(), q.requires_grad_(), *(params[name].detach().clone().requires_grad_()
                                                         for name in names))
    assert gradcheck(logits, inputs)


class _MaskedLogits(nn.Module):
    """The attention logits as a module's forward (padded boxes at 0 instead of −inf, for finite differences)."""

    def __init__(self, inner: BilinearAttentionMap, mask: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.mask = inner, mask

    def forward(self, v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return self.inner.logits(v, q, self.mask, mask_value=0.0)


def test_projecting_only_the_real_boxes_gives_the_same_outputs_and_gradients(monkeypatch):
    import ban
    import ban.nn.bilinear as bilinear

    config = ban.BANConfig(num_tokens=30, num_answers=11, feature_dim=12, hidden_dim=8, word_dim=10, num_glimpses=2,
                           dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0)
    torch.manual_seed(0)
    model = ban.build_model(config).double().train()
    features = torch.rand(3, 7, 12, dtype=torch.float64)
    features[0, 4:] = 0  # image 0 has 4 real boxes, image 1 has 6, image 2 all 7
    features[1, 6:] = 0
    boxes = torch.rand(3, 7, 6, dtype=torch.float64)
    questions = torch.randint(0, 30, (3, 5))

    def outputs_and_gradients():
        model.zero_grad()
        out = model(features, boxes, questions)
        out.logits.square().sum().backward()
        return out.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    packed_logits, packed_grads = outputs_and_gradients()
    monkeypatch.setattr(bilinear, "project_real_boxes", lambda projection, x, rows: projection(x))
    padded_logits, padded_grads = outputs_and_gradients()
    assert torch.allclose(packed_logits, padded_logits, atol=1e-12)
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in packed_grads.items():
        assert torch.allclose(grad, padded_grads[name], atol=1e-10), name


@pytest.mark.parametrize("score", [-12.0, -20.0])
def test_counting_gradients_stay_finite_in_float16_when_no_box_scores(score):
    """With every box's sigmoid near 0 the count is 0: its square root's epsilon (1e-20) rounded to 0 in float16, and
    the gradient was inf, then NaN. float16 scores are counted in float32; float32 ones exactly as before."""
    from ban.nn import CountingModule

    torch.manual_seed(0)
    counter = CountingModule()
    corner = torch.rand(2, 5, 2) * 0.5
    boxes = torch.cat([corner, corner + 0.3], dim=-1)
    scores = torch.full((2, 5), score, dtype=torch.float16, requires_grad=True)
    out = counter(boxes, scores)
    out.sum().backward()
    assert out.dtype == torch.float16 and torch.isfinite(out).all() and torch.isfinite(scores.grad).all()
    assert all(torch.isfinite(function.weight.grad).all() for function in counter.functions[:8])

"""Gradients of the layers whose backward is written or arranged for speed, against finite differences and
against autograd through the textbook formulas (float64)."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

from ban.nn import BilinearAttentionMap, WeightNormLinear
from ban.nn.fc import norm_scale


def test_norm_scale_gradient_matches_finite_differences():
    direction = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    gain = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    assert gradcheck(norm_scale, (direction, gain))


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

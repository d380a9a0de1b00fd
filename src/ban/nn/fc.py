"""Weight-normalised fully connected layers, as BAN uses them everywhere.

Weight normalisation here is over the whole matrix with ONE scalar gain per layer (Salimans & Kingma 2016
with ``dim=None``): ``W = g · V / ‖V‖_F``. Dropout, when used, comes before the linear map.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ban import kernels
from ban.nn.amp import autocast_off
from ban.nn.dropout import Dropout
from ban.nn.shapes import expect_dtype_fits, expect_features


class _NormScale(torch.autograd.Function):
    """``s = g / ‖V‖_F`` whose backward is one pass over V: ``∂s/∂V = −s · V / ‖V‖²`` (autograd's norm backward
    takes three), and ``∂s/∂g = 1 / ‖V‖``. Differentiable twice (the second time through autograd's norm).
    Written with ``ctx`` in ``forward``: the ``setup_context`` form that ``torch.func`` needs cost 30 µs more per
    call (torch 2.13), and a forward-mode rule (``jvp``) stops ``torch.compile``; so :func:`norm_scale` takes
    autograd's own norm under ``torch.func``'s transforms, forward mode included."""

    @staticmethod
    def forward(ctx: Any, direction: Tensor, gain: Tensor) -> Tensor:
        norm, scale = _norm_and_scale(direction, gain)
        ctx.save_for_backward(direction, gain, norm, scale)
        return scale

    @staticmethod
    def backward(ctx: Any, grad_scale: Tensor) -> tuple[Tensor, Tensor]:
        direction, gain, norm, scale = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: this gradient's own graph must reach V through its norm too
            norm, scale = _norm_and_scale(direction, gain)
        return direction * (-grad_scale * scale / norm.square()), grad_scale / norm


def _norm_and_scale(direction: Tensor, gain: Tensor) -> tuple[Tensor, Tensor]:
    """``(‖direction‖_F, gain / ‖direction‖_F)`` by autograd's own operators, in float32 under autocast too."""
    with autocast_off(direction.device.type):
        norm = torch.linalg.vector_norm(direction)
        return norm, gain / norm


def norm_scale(direction: Tensor, gain: Tensor) -> Tensor:
    """The 0-dim factor ``gain / ‖direction‖_F`` of weight normalisation (float32 even under autocast)."""
    if torch._C._are_functorch_transforms_active():  # torch.func (grad, vmap, jacfwd …): operators it knows
        return _norm_and_scale(direction, gain)[1]
    return _NormScale.apply(direction, gain)


class _CompiledWeightNormLinear(torch.autograd.Function):
    """``(x Vᵀ) · (g · c / ‖V‖_F) + b`` on the CPU with ban's kernels: V's cast to x's dtype and its squared norm
    in one pass, V's gradient (the product's, cast to float32, plus the norm's ``−s·V/‖V‖²`` term) in one pass,
    where autograd makes five (norm, cast; cast back, the norm's term, their sum); the scalar's gradient
    ``Σ grad_out · product`` summed in float64 without casting either. x is already in the product's dtype (bf16
    under autocast)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, direction: Tensor, gain: Tensor, bias: Tensor | None,
                input_scale: float) -> Tensor:
        kernel = kernels.compiled()
        if x.dtype == direction.dtype:
            weight, square_sum = direction, kernel.square_sum_and_cast_(direction, None)
        else:
            weight = torch.empty(direction.shape, dtype=x.dtype)
            square_sum = kernel.square_sum_and_cast_(direction, weight)
        norm = torch.tensor(math.sqrt(square_sum), dtype=torch.float32)
        scale = gain.detach() / norm  # float32 0-dim, as norm_scale
        if input_scale != 1.0:
            scale = scale * input_scale
        # one 2-D product: for 3-D inputs outside autograd, F.linear on the CPU took a batched product over a
        # weight copied per example (20× slower)
        product = torch.mm(x.reshape(-1, x.shape[-1]), weight.t()).view(*x.shape[:-1], weight.shape[0])
        out = product * scale.to(x.dtype) if bias is None else torch.addcmul(bias.to(x.dtype), product,
                                                                             scale.to(x.dtype))
        ctx.save_for_backward(x, weight, direction, product, norm, scale)
        ctx.input_scale, ctx.has_bias = input_scale, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, direction, product, norm, scale = ctx.saved_tensors
        grad_product = grad_out * scale.to(grad_out.dtype)
        grad_x = grad_product @ weight if ctx.needs_input_grad[0] else None
        kernel = kernels.compiled()
        grad_scale = torch.tensor(kernel.product_sum(grad_out.contiguous(), product), dtype=torch.float32)  # ∂loss/∂s
        grad_direction = None
        if ctx.needs_input_grad[1]:
            rows = grad_product.reshape(-1, grad_product.shape[-1])
            product_grad = rows.T @ x.reshape(-1, x.shape[-1])  # [out, in], in the product's dtype
            grad_direction = torch.empty(direction.shape, dtype=torch.float32)
            coefficient = -grad_scale * scale / norm.square()  # ∂s/∂V = −s · V / ‖V‖²
            kernel.weight_norm_grad_(product_grad.contiguous(), direction, float(coefficient), grad_direction)
        grad_gain = grad_scale * ctx.input_scale / norm
        # cast, then sum: 3× faster on the CPU than sum(dtype=torch.float32) of the bf16 gradient
        grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).float().sum(0) if ctx.has_bias else None
        return grad_x, grad_direction, grad_gain, grad_bias, None


def weight_normalized(direction: Tensor, gain: Tensor) -> Tensor:
    """``gain · direction / ‖direction‖_F``: direction [out, in], gain [] (one scalar for the whole tensor) →
    [out, in]."""
    return direction * norm_scale(direction, gain)


class WeightNormLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W = weight_g · weight_v / ‖weight_v‖_F``.

    Parameters: ``weight_v`` [out, in], ``weight_g`` [] (a 0-dim gain), ``bias`` [out].
    Initialised like ``nn.Linear`` with the gain equal to the initial norm (so ``W`` starts as ``weight_v``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        if min(in_features, out_features) < 1:
            raise ValueError(f"WeightNormLinear needs positive sizes, got in_features={in_features}, "
                             f"out_features={out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_g = nn.Parameter(torch.empty(()))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm())
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def weight(self) -> Tensor:
        """The effective weight ``W`` [out, in]."""
        return weight_normalized(self.weight_v, self.weight_g)

    def forward(self, x: Tensor, input_scale: float = 1.0) -> Tensor:
        """x [..., in] → [..., out], as ``(x Vᵀ) · (g / ‖V‖_F) + b``: the scalar scales the product instead of
        the matrix, so no scaled copy of V (nor its gradient) is made. ``input_scale`` multiplies x first
        (folded into the same scalar: dropout's ``1 / (1 − p)``, see :meth:`Dropout.unscaled`)."""
        expect_features("input", x, self.in_features)
        if x.dtype != self.weight_v.dtype:  # ≈ 1 µs more a call when they differ (under autocast, after the first)
            expect_dtype_fits("input", x, self.weight_v.dtype)
        if self._compiled(x):
            x = x.to(kernels.compute_dtype(x))
            with torch.autocast("cpu", enabled=False):
                return _CompiledWeightNormLinear.apply(x, self.weight_v, self.weight_g, self.bias, input_scale)
        product = F.linear(x, self.weight_v)
        scale = norm_scale(self.weight_v, self.weight_g)
        if input_scale != 1.0:
            scale = scale * input_scale
        scale = scale.to(product.dtype)
        if self.bias is None:
            return product * scale
        return torch.addcmul(self.bias.to(product.dtype), product, scale)

    def _compiled(self, x: Tensor) -> bool:
        """Whether this call takes :class:`_CompiledWeightNormLinear`: inside :func:`ban.kernels.enabled`, on float32
        CPU parameters."""
        return (kernels.active() is not None and x.device.type == "cpu" and self.weight_v.dtype == torch.float32
                and self.weight_v.is_contiguous() and x.dtype in (torch.float32, torch.bfloat16, torch.float16))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class FCStack(nn.Module):
    """A stack of weight-normalised linear layers: per layer ``[Dropout(p)] → WeightNormLinear → [ReLU]``.

    ``dims = [d0, d1, ..., dk]`` gives k layers. ``activation`` is ``"relu"`` or ``None``.
    """

    def __init__(self, dims: list[int], activation: str | None = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"FCStack needs at least an input and an output size, got dims={dims}")
        if activation not in ("relu", None):
            raise ValueError(f"activation must be 'relu' or None, got {activation!r}")
        self.activation = activation
        self.dropout = Dropout(dropout) if dropout != 0 else nn.Identity()  # Dropout refuses p outside [0, 1]
        self.layers = nn.ModuleList(WeightNormLinear(i, o) for i, o in zip(dims[:-1], dims[1:], strict=True))

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype."""
        return self.layers[0].weight_v.dtype

    def forward(self, x: Tensor) -> Tensor:
        """x [..., dims[0]] → [..., dims[-1]]."""
        for layer in self.layers:
            x = layer(*self.dropout.unscaled(x)) if isinstance(self.dropout, Dropout) else layer(x)
            if self.activation == "relu":
                x = F.relu(x)
        return x


class Classifier(nn.Module):
    """The answer classifier: ``WN-Linear(in→hidden) → ReLU → Dropout → WN-Linear(hidden→answers)``."""

    def __init__(self, in_features: int, hidden_features: int, num_answers: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.hidden = WeightNormLinear(in_features, hidden_features)
        self.dropout = Dropout(dropout)
        self.output = WeightNormLinear(hidden_features, num_answers)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, in] → logits [B, num_answers]."""
        return self.output(self.dropout(F.relu(self.hidden(x))))


def stacked_projection(stacks: list[FCStack], x: Tensor) -> Tensor:
    """Apply S single-layer FCStacks that share their input in ONE batched product.

    Each stack keeps its own independent dropout mask (as S separate calls would), its own weight-normalised
    weight and its activation. x [..., in] → [S, ..., out].
    """
    first = stacks[0]
    if any(len(stack.layers) != 1 for stack in stacks):
        raise ValueError("stacked_projection needs single-layer FCStacks")
    weights = torch.stack([stack.layers[0].weight for stack in stacks])  # [S, out, in]
    biases = torch.stack([stack.layers[0].bias for stack in stacks])  # [S, out]
    leading = x.shape[:-1]
    inputs = x.reshape(1, -1, x.shape[-1]).expand(len(stacks), -1, -1)  # [S, M, in]
    if isinstance(first.dropout, nn.Dropout):
        inputs = first.dropout(inputs)  # a fresh mask for every element of the [S, M, in] tensor
    out = torch.baddbmm(biases.unsqueeze(1).to(inputs.dtype), inputs, weights.transpose(1, 2).to(inputs.dtype))
    if first.activation == "relu":
        out = F.relu(out)
    return out.reshape(len(stacks), *leading, out.shape[-1])

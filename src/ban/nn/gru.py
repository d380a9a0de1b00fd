"""The question encoder's GRU as plain tensor operations, with its weight gradients as one matrix product over all
steps (used on the CPU with ban's kernels, and inside CUDA graphs: see :mod:`ban.nn.capture`).

``nn.GRU``'s CPU backward computes the recurrent weight's gradient step by step: fourteen thin products
[3H, B] × [B, H] and thirteen accumulations of a [3H, H] float32 tensor per training step (≈ 30 ms of the paper-best
model's CPU step, benchmarks/RESULTS.md). :func:`gru_sequence` runs the same recurrence (PyTorch's gate equations,
zero initial state, every step's output) and keeps each step's gate gradients, so the weight and bias gradients
are one product and one sum at the end. The loop over steps stays: each step needs the state before it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ban import kernels
from ban.nn.amp import autocast_off


class _GRUSequence(torch.autograd.Function):
    """x [B, L, D] → states [B, L, H] (float32) of a one-layer GRU from a zero state. The products run in
    ``dtype`` (bf16 under autocast), the gates in float32."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
                dtype: torch.dtype) -> Tensor:
        batch, steps, _ = x.shape
        hidden = weight_hh.shape[1]
        x_cast, w_ih, w_hh = x.to(dtype), weight_ih.to(dtype), weight_hh.to(dtype)
        input_gates = torch.addmm(bias_ih.to(dtype), x_cast.reshape(batch * steps, -1), w_ih.t())
        input_gates = input_gates.view(batch, steps, 3 * hidden).float()
        state = x.new_zeros(batch, hidden, dtype=torch.float32)
        # each step's tensors are kept and stacked once at the end: writing them into slices of preallocated
        # tensors would, under torch.compile, copy the whole tensor at every step (functionalised slice writes)
        kept = []  # per step: (state, reset, update, candidate, h_n)
        for step in range(steps):
            hidden_gates = torch.addmm(bias_hh.to(dtype), state.to(dtype), w_hh.t()).float()
            input_r, input_z, input_n = input_gates[:, step].chunk(3, dim=1)
            hidden_r, hidden_z, hidden_n = hidden_gates.chunk(3, dim=1)
            reset = torch.sigmoid(input_r + hidden_r)
            update = torch.sigmoid(input_z + hidden_z)
            candidate = torch.tanh(input_n + reset * hidden_n)
            state = candidate + update * (state - candidate)  # (1 − z)·n + z·h, as PyTorch writes it
            kept.append((state, reset, update, candidate, hidden_n))
        states, *gates = (torch.stack(column, dim=1) for column in zip(*kept, strict=True))  # [B, L, H] each
        ctx.save_for_backward(x_cast, w_ih, w_hh, states, *gates)
        ctx.input_dtype = x.dtype
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_states: Tensor) -> tuple[Tensor | None, ...]:
        x_cast, w_ih, w_hh, states, *gates = ctx.saved_tensors
        batch, steps, hidden = states.shape
        grad_state = states.new_zeros(batch, hidden)
        grad_input_gates, grad_hidden_gates = [], []  # per step, last first: stacked once (see forward)
        for step in reversed(range(steps)):
            grad_state = grad_state + grad_states[:, step].float()
            reset, update, candidate, hidden_n = (gate[:, step] for gate in gates)
            previous = states[:, step - 1] if step > 0 else torch.zeros_like(grad_state)
            grad_candidate = grad_state * (1 - update) * (1 - candidate * candidate)  # through tanh
            grad_update = grad_state * (previous - candidate) * update * (1 - update)  # through the sigmoid
            grad_reset = grad_candidate * hidden_n * reset * (1 - reset)
            grad_input_gates.append(torch.cat((grad_reset, grad_update, grad_candidate), dim=1))
            grad_hidden_gates.append(torch.cat((grad_reset, grad_update, grad_candidate * reset), dim=1))
            grad_state = grad_state * update + (grad_hidden_gates[-1].to(w_hh.dtype) @ w_hh).float()
        previous_states = torch.cat((torch.zeros_like(states[:, :1]), states[:, :-1]), dim=1)  # [B, L, H]
        rows_ih = torch.stack(grad_input_gates[::-1], dim=1).reshape(batch * steps, -1)  # [B·L, 3H]
        rows_hh = torch.stack(grad_hidden_gates[::-1], dim=1).reshape(batch * steps, -1)
        grad_x = (rows_ih.to(w_ih.dtype) @ w_ih).view(batch, steps, -1).to(ctx.input_dtype) \
            if ctx.needs_input_grad[0] else None
        grad_w_ih = (rows_ih.to(w_ih.dtype).t() @ x_cast.reshape(batch * steps, -1)).float()
        grad_w_hh = (rows_hh.to(w_hh.dtype).t() @ previous_states.reshape(batch * steps, -1).to(w_hh.dtype)).float()
        return grad_x, grad_w_ih, grad_w_hh, rows_ih.sum(0), rows_hh.sum(0), None


def gru_sequence(rnn: nn.GRU, x: Tensor) -> Tensor:
    """Every step's output of ``rnn`` (one layer, unidirectional, batch_first, with biases) from a zero state:
    x [B, L, D] → [B, L, H] in the GRU's dtype (float32 under autocast; bf16 for a GRU cast to bf16, as ``nn.GRU``
    gives). The products run in the autocast dtype of x's device when autocast is on, the gates in float32 (for a
    float64 GRU too)."""
    if rnn.num_layers != 1 or rnn.bidirectional or not rnn.batch_first or not rnn.bias:
        raise ValueError(f"gru_sequence computes a one-layer, unidirectional, batch_first GRU with biases, not {rnn}")
    dtype = kernels.compute_dtype(x)
    with autocast_off(x.device.type):
        states = _GRUSequence.apply(x, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0, dtype)
    return states.to(rnn.weight_hh_l0.dtype)

"""gru_sequence is nn.GRU's recurrence with its gradients (ban.nn.gru), and the question encoder uses it only where
it should."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ban import kernels
from ban.models.text import QuestionEncoder
from ban.nn.gru import gru_sequence


def _run(rnn: nn.GRU, x: torch.Tensor, ours: bool, autocast: bool, dtype: torch.dtype = torch.float32):
    rnn = copy.deepcopy(rnn).to(dtype)
    x = x.to(dtype, copy=True).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        states = gru_sequence(rnn, x) if ours else rnn(x)[0]
    weights = torch.linspace(-1, 2, states.numel(), dtype=dtype).view(states.shape)
    (states.to(dtype) * weights).sum().backward()
    return [states.to(dtype), x.grad] + [parameter.grad for parameter in rnn.parameters()]


@pytest.mark.parametrize("shape", [(3, 4, 7, 5), (1, 14, 9, 6), (6, 1, 3, 8)])  # B, L, D, H
def test_outputs_and_every_gradient_match_nn_gru_in_float32(shape):
    batch, steps, features, hidden = shape
    torch.manual_seed(0)
    rnn = nn.GRU(features, hidden, batch_first=True)
    x = torch.randn(batch, steps, features)
    for ours, theirs in zip(_run(rnn, x, True, False), _run(rnn, x, False, False), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_under_bf16_autocast_it_is_as_close_to_float64_as_nn_gru():
    torch.manual_seed(1)
    rnn = nn.GRU(48, 40, batch_first=True)
    x = torch.randn(8, 14, 48)
    exact = _run(rnn, x, False, False, torch.float64)
    ours, theirs = _run(rnn, x, True, True), _run(rnn, x, False, True)
    assert ours[0].dtype == theirs[0].dtype == torch.float32
    for name, mine, reference, truth in zip(["states", "x", "w_ih", "w_hh", "b_ih", "b_hh"], ours, theirs, exact,
                                            strict=True):
        scale = truth.abs().max().item()
        my_error = (mine.double() - truth).abs().max().item() / scale
        reference_error = (reference.double() - truth).abs().max().item() / scale
        assert my_error < 2e-2 and my_error <= 1.5 * reference_error + 1e-4, (name, my_error, reference_error)


def test_a_gru_cast_to_bf16_gives_bf16_states_as_nn_gru_does():
    torch.manual_seed(2)
    rnn = nn.GRU(12, 10, batch_first=True).to(torch.bfloat16)
    x = torch.randn(4, 6, 12, dtype=torch.bfloat16)
    ours, theirs = gru_sequence(rnn, x), rnn(x)[0]
    assert ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2)
    ours.float().sum().backward()
    assert all(parameter.grad.dtype == torch.bfloat16 for parameter in rnn.parameters())


def test_the_question_encoder_takes_it_only_when_training_inside_enabled(kernel, monkeypatch):
    encoder = QuestionEncoder(6, 5)
    x = torch.randn(2, 3, 6)
    calls = []

    def counted(rnn: nn.GRU, inputs: torch.Tensor) -> torch.Tensor:
        calls.append(inputs.shape)
        return gru_sequence(rnn, inputs)

    monkeypatch.setattr("ban.models.text.gru_sequence", counted)
    plain = encoder(x)
    with kernels.enabled():
        fast = encoder(x)
        with torch.no_grad():
            encoder(x)
    assert len(calls) == 1
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)

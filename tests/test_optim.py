"""The fused CPU Adamax follows torch.optim.Adamax step for step, and is chosen only where it pays."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from ban import kernels
from ban.engine.optim import FusedCPUAdamax, adamax

SHAPES = [(300, 257), (1281,), (), (7, 3, 5)]  # odd sizes: the parallel chunks do not divide them


def twin_parameters(seed: int) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    generator = torch.Generator().manual_seed(seed)
    values = [torch.randn(shape, generator=generator) for shape in SHAPES]
    return [nn.Parameter(v.clone()) for v in values], [nn.Parameter(v.clone()) for v in values]


def set_gradients(first: list[nn.Parameter], second: list[nn.Parameter], generator: torch.Generator) -> None:
    for a, b in zip(first, second, strict=True):
        grad = torch.randn(a.shape, generator=generator) * 10.0 ** int(torch.randint(-6, 1, (), generator=generator))
        grad[torch.rand(a.shape, generator=generator) < 0.1] = 0.0  # entries without gradient: u decays to ε
        a.grad, b.grad = grad.clone(), grad.clone()


def test_fused_steps_follow_torch_adamax_and_share_its_state(kernel):
    fused_params, torch_params = twin_parameters(0)
    fused = FusedCPUAdamax(fused_params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8)
    reference = torch.optim.Adamax(torch_params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8)
    generator = torch.Generator().manual_seed(1)
    for _ in range(8):
        set_gradients(fused_params, torch_params, generator)
        fused.step()
        reference.step()
    for a, b, initial in zip(fused_params, torch_params, twin_parameters(0)[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
        assert (a - initial).abs().max() > 1e-3  # it did move (8 steps of ≈ lr each)
    fused_state, torch_state = fused.state_dict(), reference.state_dict()
    assert fused_state["param_groups"] == torch_state["param_groups"]
    for index, entry in torch_state["state"].items():
        assert fused_state["state"][index].keys() == entry.keys()
        assert float(fused_state["state"][index]["step"]) == float(entry["step"]) == 8
        for name in ("exp_avg", "exp_inf"):
            torch.testing.assert_close(fused_state["state"][index][name], entry[name], rtol=1e-6, atol=1e-9)

    resumed_params = [nn.Parameter(p.detach().clone()) for p in fused_params]  # a fused checkpoint, resumed unfused
    resumed = torch.optim.Adamax(resumed_params, lr=2e-3)
    resumed.load_state_dict(copy.deepcopy(fused.state_dict()))  # as a checkpoint holds it: its own tensors
    set_gradients(fused_params, resumed_params, generator)
    fused.step()
    resumed.step()
    for a, b in zip(fused_params, resumed_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_a_non_finite_gradient_poisons_the_parameter_as_torch_does(kernel):
    fused_params, torch_params = twin_parameters(2)
    fused, reference = FusedCPUAdamax(fused_params, lr=1e-3), torch.optim.Adamax(torch_params, lr=1e-3)
    for params in (fused_params, torch_params):
        for p in params:
            p.grad = torch.ones_like(p)
            p.grad.view(-1)[0] = math.nan
    fused.step()
    reference.step()
    for a, b in zip(fused_params, torch_params, strict=True):
        assert torch.equal(a.isnan(), b.isnan()) and a.view(-1)[0].isnan()


def test_groups_it_cannot_fuse_take_torchs_step(kernel):
    fused_params, torch_params = twin_parameters(3)
    fused = FusedCPUAdamax(fused_params, lr=1e-3, weight_decay=0.1)
    reference = torch.optim.Adamax(torch_params, lr=1e-3, weight_decay=0.1)
    set_gradients(fused_params, torch_params, torch.Generator().manual_seed(4))
    fused.step()
    reference.step()
    for a, b in zip(fused_params, torch_params, strict=True):
        assert torch.equal(a, b)  # the very same code ran


@pytest.mark.parametrize("case", ["float64", "weight-decay", "non-contiguous"])
def test_clipped_steps_it_cannot_fuse_still_clip(case):
    """clipped_step over a FusedCPUAdamax that runs torch.optim.Adamax.step (a float64 or non-contiguous
    parameter, weight decay; or no kernel at all) is clip_grads_with_norm_ then that step: the same gradients,
    state and parameters as the twins clipped and stepped by torch over 3 steps whose gradient norm is above
    max_norm (Adamax's m and u carry the clipped scale, and weight decay adds p to the clipped gradient)."""
    from ban.engine.optim import clipped_step, gradient_norm

    generator = torch.Generator().manual_seed(6)
    dtype = torch.float64 if case == "float64" else torch.float32
    values = [torch.randn(shape, generator=generator, dtype=dtype) for shape in [(6, 5), (7,), ()]]
    if case == "non-contiguous":
        values[0] = torch.randn(5, 6, generator=generator).t()  # a transposed view: not contiguous
    ours, theirs = [nn.Parameter(v.clone()) for v in values], [nn.Parameter(v.clone()) for v in values]
    assert ours[0].is_contiguous() == (case != "non-contiguous")  # clone keeps the strides
    settings = {"lr": 0.01, "weight_decay": 0.1 if case == "weight-decay" else 0.0}
    optimizer = FusedCPUAdamax(ours, **settings)
    reference = torch.optim.Adamax(theirs, **settings)
    for _ in range(3):
        for a, b in zip(ours, theirs, strict=True):
            grad = torch.randn(a.shape, generator=generator, dtype=dtype) * 5
            a.grad, b.grad = grad.clone(), grad.clone()
        norm = gradient_norm(ours)
        assert norm > 1.0  # clipping to 0.25 scales the gradients by less than a quarter
        clipped_step(optimizer, ours, 0.25, norm)
        nn.utils.clip_grads_with_norm_(theirs, 0.25, gradient_norm(theirs))
        reference.step()
        for a, b in zip(ours, theirs, strict=True):
            for key in ("exp_avg", "exp_inf", "step"):
                torch.testing.assert_close(optimizer.state[a][key], reference.state[b][key], rtol=1e-12, atol=0)
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_the_fused_update_is_chosen_for_large_cpu_models_only(kernel, monkeypatch):
    small = [nn.Parameter(torch.zeros(10))]
    large = [nn.Parameter(torch.zeros(kernels.MIN_PARAMETERS))]
    cpu = torch.device("cpu")
    assert type(adamax(small, cpu, lr=1e-3)) is torch.optim.Adamax
    assert type(adamax(large, cpu, lr=1e-3)) is FusedCPUAdamax
    assert type(adamax(large, torch.device("meta"), lr=1e-3)) is torch.optim.Adamax
    monkeypatch.setenv("BAN_CPU_KERNELS", "0")
    assert type(adamax(large, cpu, lr=1e-3)) is torch.optim.Adamax


def test_without_a_compiler_training_falls_back_to_torch_adamax(tmp_path):
    child = ("import warnings, torch\n"
             "from ban.engine.optim import adamax\n"
             "from ban.kernels import MIN_PARAMETERS\n"
             "with warnings.catch_warnings(record=True) as caught:\n"
             "    warnings.simplefilter('always')\n"
             "    chosen = adamax([torch.nn.Parameter(torch.zeros(MIN_PARAMETERS))], torch.device('cpu'), 1e-3)\n"
             "print(type(chosen).__name__, '|', caught[0].message)\n")
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "build")}
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True)
    chosen, message = done.stdout.strip().split(" | ", 1)
    assert chosen == "Adamax" and message.startswith("ban's CPU kernels could not be built")
    assert f"ban: building the CPU kernels (first use in this installation, about a minute) in {tmp_path}" \
        in done.stderr  # said before the minute's wait, not after


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_update_clips_and_follows_torch_adamax_and_its_learning_rate_without_recompiling(compiled):
    """AdamaxUpdate against clip_grads_with_norm_ + torch.optim.Adamax over 4 steps (one parameter never has
    a gradient), the learning rate changed after two (the update reads it from its tensor); warm_up changes
    nothing real, and the real calls then need no new compilation."""
    from ban.engine.graphs import initialise_optimizer
    from ban.engine.optim import AdamaxUpdate, gradient_norm
    from ban.engine.schedule import set_learning_rate

    ours, theirs = twin_parameters(3)
    idle = nn.Parameter(torch.ones(4))
    optimizer = torch.optim.Adamax([*ours, idle], lr=0.01)
    reference = torch.optim.Adamax(theirs, lr=0.01)
    initialise_optimizer(optimizer)
    update = AdamaxUpdate(optimizer, max_norm=0.25, compile=compiled)
    before = [p.detach().clone() for p in ours], copy.deepcopy(optimizer.state_dict())
    torch._dynamo.reset()
    with torch._dynamo.config.patch(cache_size_limit=1, fail_on_recompile_limit_hit=True):
        update.warm_up(ours)
        assert all(torch.equal(p, q) for p, q in zip(ours, before[0], strict=True))
        assert str(optimizer.state_dict()) == str(before[1])
        generator = torch.Generator().manual_seed(4)
        for step in range(4):
            if step == 2:
                set_learning_rate(optimizer, 0.003)
                set_learning_rate(reference, 0.003)
                update.follow_learning_rate()
            set_gradients(ours, theirs, generator)
            update(gradient_norm(ours))
            nn.utils.clip_grads_with_norm_(theirs, 0.25, gradient_norm(theirs))
            reference.step()
    assert update.lr.item() == pytest.approx(0.003)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        for key in ("exp_avg", "exp_inf", "step"):
            torch.testing.assert_close(optimizer.state[a][key], reference.state[b][key], rtol=1e-6, atol=1e-9)
    assert torch.equal(idle, torch.ones(4)) and not optimizer.state[idle]["step"]

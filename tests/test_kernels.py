"""ban's compiled CPU kernels compute what the PyTorch operators they replace compute (ban.kernels)."""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import ban
from ban import kernels
from ban.engine.loss import vqa_loss
from ban.engine.optim import FusedCPUAdamax, clipped_step, gradient_norm
from ban.nn.counting import CountingModule, PiecewiseLinear
from ban.nn.dropout import Dropout, seeded_mask, splitmix64_words
from ban.nn.fc import WeightNormLinear


def test_the_mask_bits_are_splitmix64():
    # the first outputs of Vigna's reference splitmix64.c seeded with 1234567
    expected = [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
                16408922859458223821]
    assert splitmix64_words(1234567, 0, 5).tolist() == expected
    assert splitmix64_words(1234567, 3, 2).tolist() == expected[3:]  # any range, from the word's index


@pytest.mark.parametrize("count", [1, 2, 3, 4097, 2 * 65536 + 3])  # odd counts; several NumPy chunks and threads
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_mask_is_the_numpy_mask(kernel, count, dtype):
    x = torch.randn(count)
    x[:3] = torch.tensor([math.nan, -0.5, math.inf])[:count]
    seed, threshold = 2**63 - 12345, 3 * 2**30  # keep 3/4
    expected = (x * seeded_mask(x.shape, seed, threshold)).mul_(1.25).to(dtype)
    out = torch.empty(count, dtype=dtype)
    kernel.masked_scale_(x, out, seed, threshold, 1.25)
    assert torch.equal(out.isnan(), expected.isnan())  # NaN · 0 stays NaN, as in the torch path
    finite = ~expected.isnan()
    assert torch.equal(out[finite], expected[finite])
    assert torch.equal(out[finite].signbit(), expected[finite].signbit())  # −x · 0 = −0 in both


def _dropout_run(enabled: bool, unscaled: bool, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    layer = Dropout(0.3).train()
    x = torch.randn(7, 33, generator=torch.Generator().manual_seed(0)).requires_grad_()
    torch.manual_seed(11)
    with kernels.enabled(enabled), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer.unscaled(x)[0] if unscaled else layer(x)
    (out.float() * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
    return out, x.grad


@pytest.mark.parametrize("unscaled", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_dropout_inside_and_outside_enabled_draws_the_same_masks_and_gradients(kernel, unscaled, autocast):
    out, grad = _dropout_run(True, unscaled, autocast)
    reference_out, reference_grad = _dropout_run(False, unscaled, autocast)
    assert out.dtype == reference_out.dtype and torch.equal(out, reference_out)
    assert torch.equal(grad, reference_grad)


def test_square_sum_is_exact_enough_and_independent_of_the_thread_count(kernel):
    direction = torch.randn(1000, 333)  # several fixed blocks
    cast = torch.empty(direction.shape, dtype=torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = kernel.square_sum_and_cast_(direction, None)
        torch.set_num_threads(2)
        together = kernel.square_sum_and_cast_(direction, cast)
    finally:
        torch.set_num_threads(threads)
    assert alone == together  # the same float64, bit for bit
    assert together == pytest.approx(float(direction.double().square().sum()), rel=1e-13)
    assert torch.equal(cast, direction.to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_product_sum_is_the_float64_dot_product(kernel, dtype):
    a, b = torch.randn(3, 70001).to(dtype), torch.randn(3, 70001).to(dtype)
    assert kernel.product_sum(a, b) == pytest.approx(float(a.double().flatten() @ b.double().flatten()), rel=1e-12)
    with pytest.raises(RuntimeError, match="one dtype and size"):
        kernel.product_sum(a, b[:, :-1].contiguous())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_direction_gradient_is_the_cast_product_gradient_plus_the_norm_term(kernel, dtype):
    direction = torch.randn(129, 65)
    product_grad = torch.randn(129, 65).to(dtype)
    out = torch.empty_like(direction)
    kernel.weight_norm_grad_(product_grad, direction, -0.375, out)
    assert torch.equal(out, product_grad.float() + direction * torch.tensor(-0.375))


def _piecewise_run(function: PiecewiseLinear, x: torch.Tensor, enabled: bool,
                   dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    function = copy.deepcopy(function).to(dtype)
    x = x.to(dtype, copy=True).requires_grad_()
    with kernels.enabled(enabled):
        out = function(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape)).sum().backward()
    return [out, x.grad, function.weight.grad]


def _no_worse_than_float32_autograd(ours: list[torch.Tensor], theirs: list[torch.Tensor],
                                    exact: list[torch.Tensor]) -> None:
    """Each of ours is as close to the float64 values as PyTorch's float32 autograd (sums in another order)."""
    for name, mine, reference, truth in zip(["out", "x", "weight"], ours, theirs, exact, strict=True):
        scale = truth.abs().max().item()
        my_error = (mine.double() - truth).abs().max().item() / scale
        reference_error = (reference.double() - truth).abs().max().item() / scale
        assert my_error <= 2 * reference_error + 1e-6, (name, my_error, reference_error)


def test_the_compiled_piecewise_linear_function_has_the_dense_forms_values_and_gradients(kernel):
    torch.manual_seed(3)
    function = PiecewiseLinear(16)
    with torch.no_grad():
        function.weight.copy_(torch.rand(17) * 2 - 0.5)  # signed weights: |w| is normalised
    x = torch.rand(40000) * 1.4 - 0.2  # beyond [0, 1] on both sides, several blocks
    x[:6] = torch.tensor([0.0, 1.0, 0.5, 0.25, 3 / 16, 1 / 16])  # the ends and knots (one ramp passes there)
    ours, theirs = _piecewise_run(function, x, True), _piecewise_run(function, x, False)
    _no_worse_than_float32_autograd(ours, theirs, _piecewise_run(function, x, False, torch.float64))
    torch.testing.assert_close(ours[:2], theirs[:2], rtol=1e-6, atol=1e-6)  # element-wise: the same
    x[7] = math.nan
    ours, theirs = _piecewise_run(function, x, True), _piecewise_run(function, x, False)
    assert ours[0][7].isnan() and ours[1][7] == theirs[1][7] == 0  # clamp's backward passes nothing at NaN
    assert torch.equal(ours[2].isnan(), theirs[2].isnan())


def test_the_compiled_function_on_the_knots_is_the_correctly_rounded_sum_of_the_slopes(kernel):
    """f(m / n) = ŵ₀ + … + ŵ_m, rounded once from float64 (so f(1) is Σ ŵ = 1 up to the ŵ's own rounding), where a
    float32 running sum drifts by an ulp or more for about half of all weight vectors."""
    generator = torch.Generator().manual_seed(5)
    for _ in range(50):
        function = PiecewiseLinear(16)
        with torch.no_grad():
            function.weight.copy_(torch.rand(17, generator=generator) * 2 - 0.5)
        slopes = function.weight.detach().abs()
        slopes = slopes / slopes.sum()
        with torch.no_grad(), kernels.enabled(True):
            knots = function(torch.arange(17, dtype=torch.float32) / 16)
        assert torch.equal(knots, slopes.double().cumsum(0).float())


def test_the_counting_module_counts_the_same_inside_and_outside_enabled(kernel):
    generator = torch.Generator().manual_seed(4)
    boxes = torch.rand(64, 20, 4, generator=generator)
    boxes[..., 2:] += boxes[..., :2]
    scores = torch.randn(64, 20, generator=generator)
    scores[:5, 12:] = -math.inf  # padded boxes
    results = {}
    for enabled, dtype in ((True, torch.float32), (False, torch.float32), (False, torch.float64)):
        counter, logits = CountingModule(10).to(dtype), scores.to(dtype, copy=True).requires_grad_()
        with kernels.enabled(enabled):
            out = counter(boxes.to(dtype), logits)
        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape)).sum().backward()
        results[enabled, dtype] = [out, logits.grad, torch.cat([f.weight.grad for f in counter.functions[:8]])]
    ours, theirs = results[True, torch.float32], results[False, torch.float32]
    _no_worse_than_float32_autograd(ours, theirs, results[False, torch.float64])
    torch.testing.assert_close(ours[:2], theirs[:2], rtol=1e-5, atol=1e-6)


def _linear_run(layer: WeightNormLinear, x: torch.Tensor, enabled: bool, autocast: bool, input_scale: float,
                dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    layer = copy.deepcopy(layer).to(dtype)
    x = x.to(dtype, copy=True).requires_grad_()
    with kernels.enabled(enabled), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(x, input_scale)
    (out.to(dtype) * torch.linspace(-1, 1, out.shape[-1], dtype=dtype)).sum().backward()
    grads = [x.grad, layer.weight_v.grad, layer.weight_g.grad]
    return [out.to(dtype)] + grads + ([layer.bias.grad] if layer.bias is not None else [])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_scale", [1.0, 1.25])
def test_the_compiled_weight_norm_linear_matches_autograd_in_float32(kernel, bias, input_scale):
    torch.manual_seed(0)
    layer = WeightNormLinear(37, 23, bias=bias)
    with torch.no_grad():
        layer.weight_g.mul_(1.7)  # a gain away from the norm
    x = torch.randn(4, 5, 37)
    compiled = _linear_run(layer, x, True, False, input_scale)
    reference = _linear_run(layer, x, False, False, input_scale)
    for ours, theirs in zip(compiled, reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_the_compiled_weight_norm_linear_under_bf16_autocast_is_as_close_to_float64_as_autograd(kernel):
    torch.manual_seed(1)
    layer = WeightNormLinear(300, 200)
    with torch.no_grad():
        layer.weight_g.mul_(0.6)
    x = torch.randn(64, 300)
    exact = _linear_run(layer, x, False, False, 1.25, torch.float64)
    compiled = _linear_run(layer, x, True, True, 1.25)
    reference = _linear_run(layer, x, False, True, 1.25)
    for name, ours, theirs, truth in zip(["out", "x", "V", "g", "b"], compiled, reference, exact, strict=True):
        scale = truth.abs().max().item()
        ours_error = (ours.double() - truth).abs().max().item() / scale
        theirs_error = (theirs.double() - truth).abs().max().item() / scale
        assert ours_error < 2e-2 and ours_error <= 1.5 * theirs_error + 1e-4, (name, ours_error, theirs_error)


@pytest.mark.parametrize("fused", [True, False])
def test_clipped_step_is_clip_grad_norm_then_step(kernel, fused):
    generator = torch.Generator().manual_seed(5)
    values = [torch.randn(shape, generator=generator) for shape in [(300, 257), (1281,), ()]]
    grads = [torch.randn(v.shape, generator=generator) for v in values]
    ours = [nn.Parameter(v.clone()) for v in values]
    theirs = [nn.Parameter(v.clone()) for v in values]
    optimizer = (FusedCPUAdamax if fused else torch.optim.Adamax)(ours, lr=2e-3)
    reference = torch.optim.Adamax(theirs, lr=2e-3)
    for _ in range(3):
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        norm = gradient_norm(ours)
        clipped_step(optimizer, ours, 0.25, norm)
        assert float(nn.utils.clip_grad_norm_(theirs, 0.25)) == float(norm) > 0.25  # it does clip
        reference.step()
    for p, q in zip(ours, theirs, strict=True):
        if fused:
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9)
        else:
            assert torch.equal(p, q)


def test_a_ban_model_trains_the_same_inside_and_outside_enabled(kernel):
    config = ban.BANConfig(num_tokens=40, num_answers=17, feature_dim=24, hidden_dim=16, word_dim=20,
                           num_glimpses=2)  # the paper's dropout rates: the masks must agree too
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(6, 9, 24, generator=generator).relu()
    features[0, 5:] = 0  # padded boxes
    boxes = torch.rand(6, 9, 6, generator=generator)
    questions = torch.randint(0, 41, (6, 14), generator=generator)
    targets = torch.rand(6, 17, generator=generator)
    torch.manual_seed(0)
    initial = ban.build_model(config)
    losses = {}
    for enabled in (True, False):
        model = copy.deepcopy(initial).train()
        optimizer = torch.optim.Adamax(model.parameters(), lr=2e-3)
        torch.manual_seed(9)
        losses[enabled] = []
        with kernels.enabled(enabled):
            for _ in range(4):
                loss = vqa_loss(model(features, boxes, questions).logits, targets, 6)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clipped_step(optimizer, list(model.parameters()), 0.25, gradient_norm(model.parameters()))
                losses[enabled].append(loss.item())
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert losses[True][-1] < losses[True][0]


def test_enabled_is_scoped_and_wanted_follows_size_device_and_switch(kernel, monkeypatch):
    assert kernels.active() is None
    with kernels.enabled() as using:
        assert using and kernels.active() is kernel
        with kernels.enabled(False) as inner:
            assert not inner and kernels.active() is None
        assert kernels.active() is kernel
    assert kernels.active() is None
    cpu = torch.device("cpu")
    assert kernels.wanted(kernels.MIN_PARAMETERS, cpu) and not kernels.wanted(kernels.MIN_PARAMETERS - 1, cpu)
    assert not kernels.wanted(kernels.MIN_PARAMETERS, torch.device("meta"))
    monkeypatch.setenv("BAN_CPU_KERNELS", "0")
    assert not kernels.wanted(kernels.MIN_PARAMETERS, cpu)


def test_a_build_stopped_midway_does_not_block_the_next(kernel, tmp_path):
    # a build killed by a signal leaves PyTorch's lock file behind; every later build used to wait for it forever
    built = kernels.build_directory()
    leftover = tmp_path / built.name
    shutil.copytree(built, leftover, ignore=shutil.ignore_patterns("lock"))
    (leftover / "lock").touch()
    child = "from ban import kernels\nprint(kernels.compiled() is not None, kernels.build_directory())"
    done = subprocess.run([sys.executable, "-c", child], env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.split() == ["True", str(leftover)] and not (leftover / "lock").exists()


def test_two_checkouts_sharing_an_environment_build_in_two_folders(monkeypatch):
    """A second checkout (a git worktree) in the same venv: its own folder, not a rebuild over the first's."""
    here = kernels.build_directory()
    monkeypatch.setattr(kernels, "__file__", "/elsewhere/src/ban/kernels/__init__.py")
    elsewhere = kernels.build_directory()
    assert elsewhere != here and elsewhere.parent == here.parent


def test_a_file_system_without_flock_builds_with_pytorchs_lock_only(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "lock").touch()  # PyTorch's: without our lock nothing tells a leftover from a live build
    with kernels.building(tmp_path / "build"):
        entered = True
    assert entered and (tmp_path / "build" / "lock").exists()

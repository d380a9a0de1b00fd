"""The recipe's optimizer, Adamax, with a compiled one-pass update for large models on the CPU.

PyTorch's Adamax makes sixteen passes over memory per parameter element (six element-wise operations); on the
paper-best model's 90.6 M parameters that was ≈ 0.11 s of a 0.95 s CPU training step (benchmarks/RESULTS.md).
:class:`FusedCPUAdamax` runs the same update as one loop per parameter (``adamax_cpu.cpp``, compiled with
PyTorch's C++ extension loader on first use, ≈ 25 s, then cached under ``$TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``). :func:`adamax` picks it for CPU models of at least :data:`FUSED_MIN_PARAMETERS`
parameters, where the compilation pays for itself within a few hundred steps; anywhere else, when the compiler is
missing or ``BAN_FUSED_ADAMAX=0``, it returns ``torch.optim.Adamax``. Both have the same hyper-parameters, state and
``state_dict``, so a checkpoint written with one resumes with the other.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

FUSED_MIN_PARAMETERS = 10_000_000
_SOURCE = Path(__file__).with_name("adamax_cpu.cpp")


@cache
def cpu_kernel() -> Any:
    """The compiled extension module (its ``adamax_update``), or None with a warning when it cannot be built."""
    from torch.utils.cpp_extension import load

    began = time.perf_counter()
    try:
        module = load(name="ban_adamax_cpu", sources=[str(_SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                      extra_ldflags=["-fopenmp"])
    except Exception as error:  # no compiler, no ninja, a failed build: the unfused update still works
        warnings.warn(f"the fused CPU Adamax could not be built ({type(error).__name__}: {error}); "
                      "using torch.optim.Adamax", RuntimeWarning, stacklevel=2)
        return None
    if time.perf_counter() - began > 2:  # it was compiled now, not loaded from the cache
        print(f"ban: compiled the fused CPU Adamax in {time.perf_counter() - began:.0f} s (cached for later runs)",
              file=sys.stderr)
    return module


def adamax(parameters: Iterable[nn.Parameter], device: torch.device, lr: float, betas: tuple[float, float] = (0.9,
           0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """Adamax over ``parameters``: :class:`FusedCPUAdamax` for CPU models of at least :data:`FUSED_MIN_PARAMETERS`
    parameters when its kernel builds (and ``BAN_FUSED_ADAMAX`` is not ``0``), else ``torch.optim.Adamax``."""
    parameters = list(parameters)
    large = sum(parameter.numel() for parameter in parameters) >= FUSED_MIN_PARAMETERS
    wanted = device.type == "cpu" and large and os.environ.get("BAN_FUSED_ADAMAX", "1") != "0"
    kind = FusedCPUAdamax if wanted and cpu_kernel() is not None else torch.optim.Adamax
    return kind(parameters, lr=lr, betas=betas, eps=eps)


class FusedCPUAdamax(torch.optim.Adamax):
    """``torch.optim.Adamax`` whose step updates each float32 CPU parameter in one compiled pass (read p, g, m, u;
    write p, m, u). Same hyper-parameters, state and ``state_dict``; a step it cannot fuse (another device or
    dtype, ``maximize``, weight decay, a capturable or differentiable group) runs ``torch.optim.Adamax.step``."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        kernel = cpu_kernel()
        if kernel is None or not all(self._fusable(group) for group in self.param_groups):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_infs, steps = [], [], [], [], []
            self._init_group(group, params, grads, exp_avgs, exp_infs, steps)
            beta1, beta2 = group["betas"]
            for param, grad, exp_avg, exp_inf, step in zip(params, grads, exp_avgs, exp_infs, steps, strict=True):
                step += 1
                step_size = group["lr"] / (1 - beta1 ** step.item())
                kernel.adamax_update(param, grad, exp_avg, exp_inf, beta1, beta2, group["eps"], step_size)
        return loss

    @staticmethod
    def _fusable(group: dict[str, Any]) -> bool:
        plain = not (group["maximize"] or group["weight_decay"] or group["capturable"] or group["differentiable"])
        return plain and all(
            p.grad is None or (p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous()
                               and p.grad.dtype == torch.float32 and p.grad.is_contiguous() and not p.grad.is_sparse)
            for p in group["params"])

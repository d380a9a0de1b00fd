"""The recipe's optimizer, Adamax, with a compiled one-pass update for large models on the CPU, and the step that
clips the gradients first.

PyTorch's Adamax makes sixteen passes over memory per parameter element (six element-wise operations); on the
paper-best model's 90.6 M parameters that was ≈ 0.11 s of a 0.95 s CPU training step (benchmarks/RESULTS.md).
:class:`FusedCPUAdamax` runs the same update as one loop per parameter (``ban/kernels/adamax.cpp``, see
:mod:`ban.kernels`), with gradient clipping's factor applied inside the same loop. :func:`adamax` picks it for CPU
models of at least :data:`ban.kernels.MIN_PARAMETERS` parameters, where the compilation pays for itself within a few
hundred steps; anywhere else, when the compiler is missing or ``BAN_CPU_KERNELS=0``, it returns
``torch.optim.Adamax``. Both have the same hyper-parameters, state and ``state_dict``, so a checkpoint written with
one resumes with the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ban import kernels


def adamax(parameters: Iterable[nn.Parameter], device: torch.device, lr: float, betas: tuple[float, float] = (0.9,
           0.999), eps: float = 1e-8, capturable: bool = False) -> torch.optim.Optimizer:
    """Adamax over ``parameters``: :class:`FusedCPUAdamax` for CPU models of at least
    :data:`ban.kernels.MIN_PARAMETERS` parameters when the kernels build (see :func:`ban.kernels.wanted`), else
    ``torch.optim.Adamax``; ``capturable``: ``torch.optim.Adamax`` with its step counters on the device, as a CUDA
    graph needs it (:mod:`ban.engine.graphs`)."""
    parameters = list(parameters)
    if capturable:
        return torch.optim.Adamax(parameters, lr=lr, betas=betas, eps=eps, capturable=True, foreach=True)
    wanted = kernels.wanted(sum(parameter.numel() for parameter in parameters), device)
    kind = FusedCPUAdamax if wanted and kernels.compiled() is not None else torch.optim.Adamax
    return kind(parameters, lr=lr, betas=betas, eps=eps)


def gradient_norm(parameters: Iterable[nn.Parameter]) -> Tensor:
    """The 2-norm of all the parameters' gradients together (0-dim), as ``clip_grad_norm_`` measures it."""
    return nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])


def clip_factor(total_norm: Tensor, max_norm: float) -> Tensor:
    """``clip_grads_with_norm_``'s factor for the gradients: ``min(1, max_norm / (total_norm + 1e-6))`` [] float32."""
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


def clipped_step(optimizer: torch.optim.Optimizer, parameters: Iterable[nn.Parameter], max_norm: float,
                 total_norm: Tensor) -> None:
    """``clip_grad_norm_(parameters, max_norm)`` with ``total_norm`` = :func:`gradient_norm` already measured,
    then ``optimizer.step()``. :class:`FusedCPUAdamax` applies the clipping factor inside its update instead of a
    separate pass (the gradients keep their unclipped values, unless its step falls back to
    ``torch.optim.Adamax``'s, which scales them first)."""
    if isinstance(optimizer, FusedCPUAdamax):
        optimizer.step(grad_scale=float(clip_factor(total_norm, max_norm)))
    else:
        nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm)
        optimizer.step()


class FusedCPUAdamax(torch.optim.Adamax):
    """``torch.optim.Adamax`` whose step updates each float32 CPU parameter in one compiled pass (read p, g, m, u;
    write p, m, u). Same hyper-parameters, state and ``state_dict``; a step it cannot fuse (another device or
    dtype, ``maximize``, weight decay, a capturable or differentiable group) runs ``torch.optim.Adamax.step``."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None, grad_scale: float = 1.0) -> float | None:
        """One update, as if every gradient had been multiplied by ``grad_scale`` first."""
        kernel = kernels.compiled()
        if kernel is None or not all(self._fusable(group) for group in self.param_groups):
            if grad_scale != 1.0:
                torch._foreach_mul_([p.grad for group in self.param_groups for p in group["params"]
                                     if p.grad is not None], grad_scale)
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
                kernel.adamax_update(param, grad, exp_avg, exp_inf, beta1, beta2, group["eps"], step_size,
                                     grad_scale)
        return loss

    @staticmethod
    def _fusable(group: dict[str, Any]) -> bool:
        plain = not (group["maximize"] or group["weight_decay"] or group["capturable"] or group["differentiable"])
        return plain and all(
            p.grad is None or (p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous()
                               and p.grad.dtype == torch.float32 and p.grad.is_contiguous() and not p.grad.is_sparse)
            for p in group["params"])


def _adamax_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_infs: list[Tensor],
                   steps: list[Tensor], grad_scale: Tensor, lr: Tensor, beta1: float, beta2: float,
                   eps: float) -> None:
    """Adamax's update of every parameter from its gradient times ``grad_scale`` [] at learning rate ``lr`` [] (in
    place; the step counters are tensors, as a capturable Adamax keeps them): m ← lerp(m, g, 1 − β₁),
    u ← max(β₂·u, |g| + ε), p ← p − lr · m / (u · (1 − β₁ᵗ)). Written as foreach operations — one kernel (or a few)
    per operation over all the parameters eagerly, which ``torch.compile`` fuses further — in the order of
    ``torch.optim.Adamax``'s capturable update, with every number read from a tensor."""
    with torch.no_grad():
        scaled = torch._foreach_mul(grads, grad_scale)
        torch._foreach_add_(steps, 1)
        torch._foreach_lerp_(exp_avgs, scaled, 1 - beta1)
        torch._foreach_mul_(exp_infs, beta2)
        torch._foreach_abs_(scaled)
        torch._foreach_add_(scaled, eps)
        torch._foreach_maximum_(exp_infs, scaled)
        step_scale = torch._foreach_pow(beta1, steps)  # β₁ᵗ, then (β₁ᵗ − 1) / lr
        torch._foreach_sub_(step_scale, 1)
        torch._foreach_div_(step_scale, lr)
        torch._foreach_addcdiv_(params, exp_avgs, torch._foreach_mul(exp_infs, step_scale))


class AdamaxUpdate:
    """Gradient clipping and ``torch.optim.Adamax``'s update as one function of the gradient norm, reading every
    number from device tensors, so that a CUDA graph can hold it: the learning rate is the tensor :attr:`lr`
    (:meth:`follow_learning_rate` copies the optimizer's into it, outside a graph). It updates the optimizer's own
    state tensors, so ``state_dict`` and checkpoints are those of the optimizer. The state must exist (e.g.
    ``ban.engine.graphs.initialise_optimizer``), with the step counters as tensors on the parameters' device
    (``capturable=True`` on a GPU).

    ``compile``: the update through ``torch.compile``, which fuses its passes over the parameters' memory (eagerly
    about eighteen; fused, as few as one: read p, g, m, u; write p, m, u). Inside a CUDA graph capture nothing may
    compile or set itself up: :meth:`warm_up` runs the update once for a set of parameters on scratch copies of them
    and their state (no real parameter or state changes), so the captured call finds it ready."""

    def __init__(self, optimizer: torch.optim.Adamax, max_norm: float, compile: bool = True) -> None:
        if not isinstance(optimizer, torch.optim.Adamax) or len(optimizer.param_groups) != 1:
            raise ValueError("AdamaxUpdate takes a torch.optim.Adamax with one parameter group")
        group = optimizer.param_groups[0]
        if group["maximize"] or group["weight_decay"] or group["differentiable"]:
            raise ValueError("AdamaxUpdate does the plain Adamax update (no maximize, no weight decay)")
        self.optimizer, self.max_norm = optimizer, max_norm
        self.lr = torch.tensor(float(group["lr"]), device=group["params"][0].device)
        self.update = torch.compile(_adamax_update) if compile else _adamax_update

    def follow_learning_rate(self) -> None:
        """Copy the optimizer's learning rate into :attr:`lr` (after ``ban.engine.schedule.set_learning_rate``)."""
        self.lr.fill_(float(self.optimizer.param_groups[0]["lr"]))

    def __call__(self, grad_norm: Tensor) -> None:
        """Clip (by :func:`clip_factor`) and update every parameter that has a gradient; grad_norm [] from
        :func:`gradient_norm`. The gradients keep their values."""
        parameters = [p for p in self.optimizer.param_groups[0]["params"] if p.grad is not None]
        self._run(parameters, [p.grad for p in parameters], self._state(parameters), grad_norm)

    def warm_up(self, parameters: list[nn.Parameter]) -> None:
        """One call for these parameters (those that will have gradients) on scratch copies: compiled for them
        (with ``compile``), every kernel loaded."""
        scratch = [nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad) for p in parameters]
        state = [[value.clone() for value in values] for values in self._state(parameters)]
        self._run(scratch, [torch.zeros_like(p) for p in parameters], state,
                  torch.ones((), device=parameters[0].device))

    def _state(self, parameters: list[nn.Parameter]) -> list[list[Tensor]]:
        state = self.optimizer.state
        return [[state[p][key] for p in parameters] for key in ("exp_avg", "exp_inf", "step")]

    def _run(self, params: list[Tensor], grads: list[Tensor], state: list[list[Tensor]], grad_norm: Tensor) -> None:
        group = self.optimizer.param_groups[0]
        exp_avgs, exp_infs, steps = state
        self.update(params, grads, exp_avgs, exp_infs, steps, clip_factor(grad_norm, self.max_norm), self.lr,
                    *group["betas"], group["eps"])

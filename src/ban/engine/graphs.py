"""BAN's training step and forward pass replayed as CUDA graphs: one launch per step instead of about a thousand.

A profile found a third of an eager paper-size step on an H100 spent launching kernels, and the packing of
real boxes waiting for the device (its row count is read back on the host). Here the host supplies what the
device would otherwise report: :func:`packed_rows` makes the real boxes' indices from the loader's box mask, padded
to a multiple of ``quantum`` rows (so few distinct shapes occur), and :func:`pad_boxes` rounds the box count up
the same way. Inside :func:`ban.nn.capture.capture_safe` no layer reads device data on the host, and
:class:`StepGraphs` captures a step once per input shape (after a few eager warm-up runs on a side stream) and
replays it: the inputs are copied into the captured buffers, the graph runs, the outputs are the captured ones
(overwritten by the next call). Graphs of different shapes share one memory pool; they never run concurrently.

The training step is the recipe's (:func:`training_step`: forward, BCE summed over answers ÷ B, backward, gradient
norm, clipping, Adamax) with ``torch.optim.Adamax(capturable=True)``, whose state must exist before a capture (a
capture of its first step would re-create it at every replay): :func:`initialise_optimizer`. Autocast runs with
its weight-cast cache off (a cached cast would be captured once and reused stale). Dropout draws fresh masks at
every replay (PyTorch advances the captured generator's offset).

:func:`compiled_forward` puts the forward pass through ``torch.compile`` as one graph (its element-wise work fused
into fewer kernels) and :class:`ban.engine.optim.AdamaxUpdate` clipping + Adamax (its foreach passes fused); the
graphed training step takes both with ``compile=True`` (``ban bench --paths compiled``). ``ban train`` replays its
own step, split around its finiteness check, with :mod:`ban.engine.trainer_graphs`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ban.data.transfer import host_to_device
from ban.engine.config import TrainConfig
from ban.engine.loss import vqa_loss
from ban.engine.optim import AdamaxUpdate, clipped_step, gradient_norm
from ban.engine.precision import autocast
from ban.engine.tasks import vqa_outputs
from ban.nn.bilinear import box_mask_from_features
from ban.nn.capture import capture_safe

ROW_QUANTUM = 1024  # packed rows are padded to a multiple of this: 2–3 shapes for batch 256, adaptive boxes
BOX_QUANTUM = 4  # box slots per image are padded to a multiple of this

Inputs = dict[str, Tensor]
Forward = Callable[[Inputs], Tensor]  # inputs → answer logits [B, A]
Update = Callable[[Tensor], None]  # gradient norm [] → the clipped update applied


def packed_rows(box_mask: Tensor, quantum: int = ROW_QUANTUM) -> Tensor:
    """The flat indices of the real boxes, computed on the host, in the form :meth:`BanForVQA.forward`'s
    ``real_rows`` takes: box_mask [B, N] bool on the CPU (True = real) → int64 [R'] with R' the real count rounded
    up to a multiple of ``quantum``, the extra entries the first padded slots (there are enough: R' ≤ B·N); when R'
    would reach B·N, every row 0…B·N−1."""
    flat = box_mask.reshape(-1)
    rows = flat.nonzero().squeeze(1)
    padded = min(math.ceil(max(rows.numel(), 1) / quantum) * quantum, flat.numel())
    if padded == flat.numel():
        return torch.arange(flat.numel())
    return torch.cat([rows, (~flat).nonzero().squeeze(1)[:padded - rows.numel()]])


def pad_boxes(batch: Inputs, quantum: int = BOX_QUANTUM) -> Inputs:
    """features [B, N, Dv], boxes [B, N, ≥4] and box_mask [B, N] (when given) of ``batch`` with N rounded up to a
    multiple of ``quantum`` (padded boxes: zero rows, False in the mask); the other entries unchanged."""
    missing = -batch["features"].shape[1] % quantum
    padded = dict(batch)
    if missing:
        padded["features"] = F.pad(batch["features"], (0, 0, 0, missing))
        padded["boxes"] = F.pad(batch["boxes"], (0, 0, 0, missing))
        if "box_mask" in batch:
            padded["box_mask"] = F.pad(batch["box_mask"], (0, missing), value=False)
    return padded


def static_batch(batch: Inputs, box_quantum: int = BOX_QUANTUM, row_quantum: int = ROW_QUANTUM,
                 host_box_mask: Tensor | None = None) -> Inputs:
    """A VQA batch (features, boxes, questions, targets, optionally box_mask; without it padded boxes are the zero
    feature rows) in the shapes the graphs take: boxes padded by :func:`pad_boxes`, plus ``rows`` =
    :func:`packed_rows` (on the batch's device). The rows come from ``host_box_mask`` [B, N] (bool, on the CPU;
    e.g. :meth:`ban.data.resident.ResidentVQA.box_mask`) when given, else from the batch's box mask read on the
    host: for a batch still on the CPU (a loader's) that costs nothing, for one on a GPU it waits for the device."""
    padded = pad_boxes(batch, box_quantum)
    if host_box_mask is None:
        host_box_mask = batch["box_mask"] if "box_mask" in batch else box_mask_from_features(batch["features"])
    slots = padded["features"].shape[1]
    host_box_mask = F.pad(host_box_mask.cpu(), (0, slots - host_box_mask.shape[1]), value=False)
    return {**padded, "rows": host_to_device(packed_rows(host_box_mask, row_quantum), padded["features"].device)}


def forward_logits(model: nn.Module, inputs: Inputs) -> Tensor:
    """The VQA model's answer logits [B, A] for ``inputs`` (with their box_mask and host-made ``rows`` when
    present)."""
    return vqa_outputs(model, inputs).logits


def compiled_forward(model: nn.Module) -> Forward:
    """:func:`forward_logits` of ``model`` through ``torch.compile``, for :func:`static_batch`'s inputs: the whole
    pass as one graph (``fullgraph``: a graph break is an error, not a silent slowdown), the packed row count
    symbolic (one compilation serves every :func:`packed_rows` length short of every row), the layers in their
    capture-safe form (:func:`ban.nn.capture.active` is true while Dynamo traces). Dynamo refuses to hold an
    ``nn.GRU`` unless ``allow_rnn`` is set; the module is only read for its weights here (the recurrence is
    :func:`ban.nn.gru.gru_sequence`)."""

    def forward(inputs: Inputs) -> Tensor:
        return forward_logits(model, inputs)

    compiled = torch.compile(forward, fullgraph=True)

    def run(inputs: Inputs) -> Tensor:
        if "rows" not in inputs:
            raise ValueError("the compiled forward pass takes the host-made rows of static_batch(); finding them "
                             "in the graph would read the device")
        batch, boxes = inputs["features"].shape[:2]
        if inputs["rows"].numel() < batch * boxes:  # every row real: nothing to pack, the shape is the batch's
            torch._dynamo.mark_dynamic(inputs["rows"], 0)
        with torch._dynamo.config.patch(allow_rnn=True):
            return compiled(inputs)

    return run


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: Inputs, precision: str,
                  max_grad_norm: float = TrainConfig.grad_clip, host_sync: bool = False, cast_cache: bool = True,
                  forward: Forward | None = None, update: Update | None = None) -> tuple[Tensor, Tensor]:
    """One step of the recipe on ``inputs`` (features, boxes, questions, targets [B, A], optionally rows):
    forward, BCE summed over answers ÷ B, backward, gradient norm, clipping at ``max_grad_norm``, the optimizer's
    step, gradients released → (loss [], gradient norm []). ``host_sync``: read the loss's and the norm's
    finiteness on the host before the update, as `ban train` does (on a GPU: waits for the step so far).
    ``cast_cache``: autocast's weight-cast cache (off in a graph). ``forward``: the model's logits for the inputs
    (default :func:`forward_logits`; e.g. :func:`compiled_forward`); ``update``: clipping and the optimizer's step
    from the gradient norm (default :func:`ban.engine.optim.clipped_step`; e.g.
    :class:`ban.engine.optim.AdamaxUpdate`)."""
    with autocast(inputs["features"].device, precision, cast_cache):
        logits = forward(inputs) if forward is not None else forward_logits(model, inputs)
    loss = vqa_loss(logits, inputs["targets"], inputs["targets"].shape[0])
    loss.backward()
    grad_norm = gradient_norm(model.parameters())
    if host_sync:
        bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))
    if update is None:
        clipped_step(optimizer, model.parameters(), max_grad_norm, grad_norm)
    else:
        update(grad_norm)
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm


@torch.no_grad()
def initialise_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Create the state of every parameter that has none, as a fresh ``torch.optim.Adamax`` holds it (all zero),
    without changing a parameter: one step with zero gradients (Adamax moves by ``m / u`` = 0 / ε = 0), then the
    new state zeroed. Parameters that have state keep it untouched (their gradients are None for that step)."""
    if not isinstance(optimizer, torch.optim.Adamax):
        raise TypeError(f"initialise_optimizer knows Adamax's state, not {type(optimizer).__name__}'s")
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    fresh = [p for p in parameters if not optimizer.state.get(p)]
    if not fresh:
        return
    saved_grads = [p.grad for p in parameters]
    fresh_ids = {id(p) for p in fresh}
    for p in parameters:
        p.grad = torch.zeros_like(p) if id(p) in fresh_ids else None
    optimizer.step()
    for p in fresh:
        for value in optimizer.state[p].values():
            value.zero_()
    for p, grad in zip(parameters, saved_grads, strict=True):
        p.grad = grad


def _buffer_key(name: str, value: Tensor) -> tuple:
    return name, tuple(value.shape), value.dtype


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph | None  # None: the step runs eagerly on the buffers (``capture=False``)
    inputs: Inputs  # the buffers the graph reads
    outputs: tuple[Tensor, ...]  # the tensors it writes


class StepGraphs:
    """``step(inputs) → tuple of tensors`` captured as one CUDA graph per distinct set of input shapes and
    replayed; warm-up and capture run inside :func:`ban.nn.capture.capture_safe`. The step must be capture-safe
    (no host reads of device data, no allocation that must persist across calls except its outputs); ``prepare``
    runs before each capture (e.g. :func:`initialise_optimizer`). ``warmup_step`` runs ``warmup`` times on a side
    stream before a capture, to let libraries set themselves up (cuBLAS workspaces, autograd's streams): for a
    training step it must not update the parameters. Graphs share the input buffers of equal name, shape and
    dtype (every call copies its inputs in first), so row buckets of one batch shape hold one copy of the
    features.

    ``capture=False`` (a CPU, where there is nothing to capture): the same sequence — buffers, ``prepare``,
    warm-up, then at every call the inputs copied into the buffers and the step run on them — with the step run
    eagerly (capture-safe) instead of replayed: what the graphs compute, checkable without a GPU."""

    def __init__(self, step: Callable[[Inputs], tuple[Tensor, ...]],
                 warmup_step: Callable[[Inputs], object] | None = None,
                 prepare: Callable[[], None] | None = None, warmup: int = 3, capture: bool = True) -> None:
        self.step, self.warmup_step, self.prepare, self.warmup = step, warmup_step or step, prepare, warmup
        self.capture = capture
        self.captured: dict[tuple, _Captured] = {}
        self.buffers: dict[tuple, Tensor] = {}
        self.pool: tuple | None = None

    def __call__(self, inputs: Inputs) -> tuple[Tensor, ...]:
        """Copy ``inputs`` into the graph of their shapes (captured on first sight) and replay it → its outputs
        (valid until the next call)."""
        key = tuple(_buffer_key(name, value) for name, value in sorted(inputs.items()))
        captured = self.captured.get(key)
        if captured is None:
            captured = self.captured[key] = self._capture(inputs)
        else:
            for name, value in inputs.items():
                captured.inputs[name].copy_(value, non_blocking=True)
        if captured.graph is None:
            with capture_safe():
                return self.step(captured.inputs)
        captured.graph.replay()
        return captured.outputs

    def _capture(self, inputs: Inputs) -> _Captured:
        static = {}
        for name, value in inputs.items():
            key = _buffer_key(name, value)
            if key in self.buffers:
                static[name] = self.buffers[key].copy_(value)
            else:
                static[name] = self.buffers[key] = value.clone()
        if self.prepare is not None:
            self.prepare()
        if not self.capture:
            with capture_safe():
                for _ in range(self.warmup):
                    self.warmup_step(static)
            return _Captured(None, static, ())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), capture_safe():
            for _ in range(self.warmup):
                self.warmup_step(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), capture_safe():
            outputs = self.step(static)
        self.pool = graph.pool()
        return _Captured(graph, static, outputs)


def graphed_training(model: nn.Module, optimizer: torch.optim.Optimizer, precision: str,
                     max_grad_norm: float = TrainConfig.grad_clip, compile: bool = False) -> StepGraphs:
    """The recipe's training step on a GPU as :class:`StepGraphs`: call it with :func:`static_batch`'s inputs →
    (loss [], gradient norm []). ``optimizer``: ``torch.optim.Adamax(capturable=True)`` (``adamax(…,
    capturable=True)``), whose state :class:`ban.engine.optim.AdamaxUpdate` updates (clipping + Adamax, as ``ban
    train``'s graphs do), first warmed up on scratch copies of the parameters that received gradients.
    ``compile``: the forward pass (and so its backward) through :func:`compiled_forward`, and the update through
    ``torch.compile``, both compiled during the first warm-up."""
    _require_gpu(model, "graphed training")
    if not (isinstance(optimizer, torch.optim.Adamax) and all(g["capturable"] for g in optimizer.param_groups)):
        raise ValueError("graphed training needs torch.optim.Adamax(capturable=True)")
    forward = compiled_forward(model) if compile else functools.partial(forward_logits, model)
    update = AdamaxUpdate(optimizer, max_grad_norm, compile=compile)
    warmed_for: list[nn.Parameter] = []

    def warm(inputs: Inputs) -> None:  # forward and backward only: the parameters stay as they are
        with autocast(inputs["features"].device, precision, cast_cache=False):
            logits = forward(inputs)
        vqa_loss(logits, inputs["targets"], inputs["targets"].shape[0]).backward()
        gradient_norm(model.parameters())
        trained = [p for p in model.parameters() if p.grad is not None]
        if [id(p) for p in trained] != [id(p) for p in warmed_for]:
            update.warm_up(trained)
            warmed_for[:] = trained
        optimizer.zero_grad(set_to_none=True)

    def prepare() -> None:
        optimizer.zero_grad(set_to_none=True)
        initialise_optimizer(optimizer)

    return StepGraphs(lambda inputs: training_step(model, optimizer, inputs, precision, max_grad_norm,
                                                   cast_cache=False, forward=forward, update=update),
                      warmup_step=warm, prepare=prepare)


def graphed_inference(model: nn.Module, precision: str, compile: bool = False) -> StepGraphs:
    """The forward pass (no gradients) as :class:`StepGraphs` → (logits [B, A],); ``compile``: through
    :func:`compiled_forward`."""
    _require_gpu(model, "graphed inference")
    forward = compiled_forward(model) if compile else functools.partial(forward_logits, model)

    def infer(inputs: Inputs) -> tuple[Tensor]:
        with torch.no_grad(), autocast(inputs["features"].device, precision, cast_cache=False):
            return (forward(inputs),)

    return StepGraphs(infer)


def _require_gpu(model: nn.Module, what: str) -> None:
    """:class:`ValueError` unless ``model``'s parameters are on a CUDA device: ``what`` replays CUDA graphs."""
    where = next(model.parameters()).device
    if where.type != "cuda":
        raise ValueError(f"{what} replays CUDA graphs: the model must be on a GPU, not on {where}")

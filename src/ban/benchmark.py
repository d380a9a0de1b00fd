"""Throughput and memory of BAN training and inference steps on synthetic tensors (``ban bench``).

A training step is what the reference's loop does per batch: forward, BCE summed over answers, backward,
gradient clipping at 0.25, Adamax. Boxes are either a fixed count or "adaptive" (10–100 per image, mean ≈ 31,
padded per batch to the batch's largest count, as bottom-up features are). Useful work is counted over real
boxes only (:func:`step_flops`): a training step counts each matrix product 3× (forward, and the gradients of its
input and its weight), except the box projections, whose input, the image features, needs no gradient (2×).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ban import kernels
from ban.data.boxes import bottom_up_box_counts
from ban.data.dictionary import QUESTION_LENGTH
from ban.engine.config import TrainConfig, resolve_device
from ban.engine.distributed import BUCKET_BATCHES
from ban.engine.graphs import (
    compiled_forward,
    forward_logits,
    graphed_inference,
    graphed_training,
    initialise_optimizer,
    static_batch,
    training_step,
)
from ban.engine.optim import AdamaxUpdate, FusedCPUAdamax, adamax
from ban.engine.precision import autocast
from ban.errors import ConfigError
from ban.machine import code_version, describe_machine
from ban.models import BANConfig, build_model, preset


@dataclass
class BenchSettings:
    preset: str = "paper-best"
    num_tokens: int = BANConfig.num_tokens  # the paper's VQA 2.0 sizes
    num_answers: int = BANConfig.num_answers
    batch_size: int = 256
    boxes: str = "adaptive"  # "adaptive", "bucketed" or a fixed count such as "36"
    question_length: int = QUESTION_LENGTH
    steps: int = 10
    warmup: int = 3
    device: str = "auto"
    seed: int = 0
    host_sync: bool = False  # read the loss's and gradient norm's finiteness on the host each step (`ban train`)
    hidden_dim: int | None = None  # None: the preset's
    num_glimpses: int | None = None
    feature_dim: int | None = None

    def model_config(self, **changes: Any) -> BANConfig:
        """The preset with these settings' sizes (and ``changes``) applied."""
        sizes = {name: getattr(self, name) for name in ("hidden_dim", "num_glimpses", "feature_dim")
                 if getattr(self, name) is not None}
        return preset(self.preset, num_tokens=self.num_tokens, num_answers=self.num_answers, **sizes, **changes)


@dataclass
class BenchResult:
    path: str
    precision: str
    mode: str
    ms_per_step: float
    questions_per_s: float
    tflops: float
    peak_memory_gib: float


def box_counts(settings: BenchSettings, generator: torch.Generator, bucket: int | None = None) -> torch.Tensor:
    """Real box counts of one batch [B]: fixed; adaptive (:func:`ban.data.boxes.bottom_up_box_counts`: 10–100,
    mean ≈ 31, so a batch pads to ≈ 100); or bucketed, a batch as ``bucket_boxes=true`` cuts them: batch
    ``bucket`` (random when None) of the :data:`~ban.engine.distributed.BUCKET_BATCHES` of a run of adaptive counts
    sorted by count (similar counts, little padding)."""
    if settings.boxes == "adaptive":
        return torch.from_numpy(bottom_up_box_counts(torch.rand(settings.batch_size, generator=generator).numpy()))
    if settings.boxes == "bucketed":
        run = np.sort(bottom_up_box_counts(torch.rand(BUCKET_BATCHES * settings.batch_size,
                                                      generator=generator).numpy()))
        if bucket is None:
            bucket = int(torch.randint(BUCKET_BATCHES, (1,), generator=generator))
        start = bucket * settings.batch_size
        return torch.from_numpy(run[start:start + settings.batch_size])
    return torch.full((settings.batch_size,), int(settings.boxes))


def synthetic_batches(settings: BenchSettings, config: BANConfig, device: torch.device,
                      count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` batches already on ``device``: features [B, N, Dv] (zero rows past each image's count),
    boxes [B, N, 6], box_mask [B, N] (True for the real boxes: a loader's batches bring it, so the model need
    not find it in the features), questions [B, L], targets [B, A]."""
    generator = torch.Generator().manual_seed(settings.seed)
    batches = []
    for index in range(count):
        # bucketed: batches spread evenly over a run's sorted counts, so that the few timed ones do the law's mean work
        counts = box_counts(settings, generator, bucket=(2 * index + 1) * BUCKET_BATCHES // (2 * count))
        num_boxes = int(counts.max())
        real = torch.arange(num_boxes)[None, :] < counts[:, None]  # [B, N]
        features = torch.rand(settings.batch_size, num_boxes, config.feature_dim, generator=generator) * real[..., None]
        corners = torch.rand(settings.batch_size, num_boxes, 2, 2, generator=generator)
        top_left, bottom_right = corners.min(2).values, corners.max(2).values
        boxes = torch.cat([top_left, bottom_right, bottom_right - top_left], -1) * real[..., None]
        questions = torch.randint(0, config.num_tokens, (settings.batch_size, settings.question_length),
                                  generator=generator)
        targets = (torch.rand(settings.batch_size, config.num_answers, generator=generator) > 0.999).float()
        batch = dict(features=features, boxes=boxes, box_mask=real, questions=questions, targets=targets,
                     real_boxes=counts.sum())
        batches.append({key: value.to(device) for key, value in batch.items()})
    return batches


def forward_flops(config: BANConfig, batch_size: int, real_boxes: int, tokens: int) -> float:
    """Matrix-product FLOPs of one forward pass of BAN for VQA over ``real_boxes`` boxes in the batch."""
    hidden, rank, glimpses = config.hidden_dim, config.rank_factor * config.hidden_dim, config.num_glimpses
    token_rows = batch_size * tokens
    flops = 3 * hidden * (config.word_features + hidden) * token_rows  # GRU gates
    flops += real_boxes * config.feature_dim * rank + token_rows * hidden * rank  # attention projections
    flops += glimpses * tokens * real_boxes * rank  # attention logits
    flops += glimpses * (real_boxes * config.feature_dim * hidden + token_rows * hidden * hidden)  # pooling projections
    flops += glimpses * tokens * real_boxes * hidden  # attention-weighted box sums
    flops += glimpses * batch_size * hidden * hidden  # residual projections
    if config.use_counting:
        flops += glimpses * batch_size * (config.num_count_objects + 1) * hidden  # count projections
    flops += batch_size * (hidden * 2 * hidden + 2 * hidden * config.num_answers)  # classifier
    return 2.0 * flops


def step_flops(config: BANConfig, batch_size: int, real_boxes: int, tokens: int, mode: str) -> float:
    """Matrix-product FLOPs of one inference forward pass (``mode="infer"``) or training step (``"train"``): the
    forward's 3×, less the input gradients nothing needs: the box projections' (the attention's to rank K and each
    glimpse's to H, over ``real_boxes`` rows of the image features) and the GRU's first state's (zeros)."""
    forward = forward_flops(config, batch_size, real_boxes, tokens)
    if mode == "infer":
        return forward
    hidden, rank, glimpses = config.hidden_dim, config.rank_factor * config.hidden_dim, config.num_glimpses
    box_projections = real_boxes * config.feature_dim * (rank + glimpses * hidden)
    first_state = batch_size * 3 * hidden * hidden
    return 3 * forward - 2.0 * (box_projections + first_state)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU's); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement: the GPU's allocator peak, or on Linux the process's peak RSS (VmHWM,
    reset through ``/proc/self/clear_refs``; where that cannot be written, the peak stays the process's so far:
    :func:`peak_memory_meaning` says which)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif _peak_rss_resets():
        Path("/proc/self/clear_refs").write_text("5")


@functools.cache
def _peak_rss_resets() -> bool:
    """Whether this process can reset and read its peak RSS (Linux's clear_refs and VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _vm_hwm_kib() is not None
    except OSError:
        return False


def _vm_hwm_kib() -> int | None:
    """The process's peak RSS since its last reset (KiB), from /proc/self/status; None where it is not there."""
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else None


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak_memory` (GiB): the GPU's allocated peak, or the process's peak RSS on the
    CPU (elsewhere than Linux: the process's peak so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    if _peak_rss_resets():
        return _vm_hwm_kib() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux, the one RSS unit assumed


def step_loop(model: nn.Module, batches: list[dict[str, torch.Tensor]], mode: str, precision: str,
              device: torch.device, host_sync: bool = False, graphed: bool = False,
              compile: bool = False, straightforward: bool = False) -> Iterator[None]:
    """One step per ``next()``, cycling through ``batches`` (dicts with features, boxes, questions, targets, as
    :func:`synthetic_batches` or the VQA collate make them): a training step (``mode="train"``: the recipe's
    forward, BCE, backward, clipping and Adamax, :func:`ban.engine.graphs.training_step`) or an inference forward
    pass. ``host_sync``: before the update, read on the host whether the loss and the gradient norm are finite, as
    `ban train` does (on a GPU: waits for the step). ``graphed``: each step replayed as one CUDA graph
    (:func:`ban.engine.graphs.graphed_training`; the batches must be :func:`ban.engine.graphs.static_batch`'s) —
    `ban train --set cuda_graphs=true` replays two, with its finiteness read between them
    (:mod:`ban.engine.trainer_graphs`; benchmarks/device_check.py times both); ``compile``: with the forward pass
    and the update through ``torch.compile`` (without ``graphed``: the compiled functions run as they are, e.g. on
    the CPU); ``straightforward``: PyTorch's operators and ``torch.optim.Adamax`` only, none of ban's CPU
    kernels."""
    optimizer = (torch.optim.Adamax(model.parameters(), lr=TrainConfig.lr) if straightforward
                 else adamax(model.parameters(), device, lr=TrainConfig.lr, capturable=graphed))
    use_kernels = isinstance(optimizer, FusedCPUAdamax) and not compile  # adamax() decided: a large CPU model
    model.train(mode == "train")
    forward, update = functools.partial(forward_logits, model), None
    if graphed:
        step = (graphed_training(model, optimizer, precision, compile=compile) if mode == "train"
                else graphed_inference(model, precision, compile=compile))
    elif compile:
        initialise_optimizer(optimizer)
        forward, update = compiled_forward(model), AdamaxUpdate(optimizer, TrainConfig.grad_clip)
    index = 0
    while True:
        batch = batches[index % len(batches)]
        index += 1
        if graphed:
            step(batch)
        elif mode == "train":
            with kernels.enabled(use_kernels):
                training_step(model, optimizer, batch, precision, host_sync=host_sync, forward=forward,
                              update=update)
        else:
            with kernels.enabled(use_kernels), torch.no_grad(), autocast(device, precision):
                forward(batch)
        yield


def measure(settings: BenchSettings, path: str, precision: str, mode: str) -> BenchResult:
    """Time ``settings.steps`` steps after ``settings.warmup`` for one (path, precision, mode). Paths:
    "straightforward" (the plain model executed plainly: every box slot projected, padding included, PyTorch's
    operators and ``torch.optim.Adamax``), "plain" (``ban train``'s default: the real boxes packed, ban's CPU
    kernels for a large CPU model, the glimpses one by one), "fused" (the glimpses' box projections in one
    product), "graphed" (plain, each step replayed as a CUDA graph; a GPU only) and "compiled" (graphed, with the
    forward pass and the clipped Adamax update through ``torch.compile``; on the CPU without graphs; compiled
    before timing)."""
    device = resolve_device(settings.device, "bench setting 'device'")
    if path == "graphed" and device.type != "cuda":
        raise ConfigError(f"the graphed path replays CUDA graphs: it needs a GPU, not {device}")
    graphed = path == "graphed" or (path == "compiled" and device.type == "cuda")
    static = path in ("graphed", "compiled")
    torch.manual_seed(settings.seed)
    config = settings.model_config(fused=path == "fused")
    model = build_model(config).to(device)
    batches = synthetic_batches(settings, config, device, count=min(settings.steps, 4))
    real_boxes = sum(int(batches[i % len(batches)]["real_boxes"]) for i in range(settings.steps)) / settings.steps
    batches = [{key: value for key, value in batch.items() if key != "real_boxes"} for batch in batches]
    # the real boxes' rows made on the host, as `ban train` brings them (the loader's work: not timed); for the
    # graphs padded to few shapes, for eager steps exact
    quanta = {} if static else dict(box_quantum=1, row_quantum=1)
    batches = [static_batch(batch, **quanta) for batch in batches]
    if path == "straightforward":  # every slot's row, padding included: nothing packed
        batches = [{**batch, "rows": torch.arange(batch["box_mask"].numel(), device=device)} for batch in batches]
    reset_peak_memory(device)
    if kernels.wanted(sum(parameter.numel() for parameter in model.parameters()), device):
        kernels.compiled()  # built (or loaded) now: with --warmup 0 the first-use build was timed as a step
    steps = step_loop(model, batches, mode, precision, device, settings.host_sync, graphed, path == "compiled",
                      path == "straightforward")
    for _ in range(settings.warmup + (len(batches) if static else 0)):  # every shape captured/compiled first
        next(steps)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(settings.steps):
        next(steps)
    synchronize(device)
    seconds = (time.perf_counter() - start) / settings.steps
    work = step_flops(config, settings.batch_size, int(real_boxes), settings.question_length, mode)
    return BenchResult(path, precision, mode, 1000 * seconds, settings.batch_size / seconds, work / seconds / 1e12,
                       peak_memory_gib(device))


def run_all(settings: BenchSettings, paths: list[str], precisions: list[str], modes: list[str]) -> list[BenchResult]:
    return [measure(settings, path, precision, mode) for mode in modes for precision in precisions for path in paths]


def format_table(results: list[BenchResult]) -> str:
    header = "| path | precision | mode | ms/step | questions/s | TFLOP/s | peak memory (GiB) |"
    lines = [header, "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r.path} | {r.precision} | {r.mode} | {r.ms_per_step:,.1f} | {r.questions_per_s:,.0f} | "
                     f"{r.tflops:.3f} | {r.peak_memory_gib:.2f} |")
    return "\n".join(lines)


def peak_memory_meaning(device: torch.device) -> str:
    """What the peak-memory column means on ``device`` (see :func:`peak_memory_gib`)."""
    if device.type == "cuda":
        return "GPU memory allocated at the peak of each row's measurement"
    if _peak_rss_resets():
        return "the process's peak RSS during each row's measurement (what was resident already included)"
    return "the process's peak RSS so far: each row shows the maximum over itself and the rows before it"


def as_json(settings: BenchSettings, results: list[BenchResult]) -> dict:
    device = resolve_device(settings.device, "bench setting 'device'")
    return {"machine": describe_machine(device), "code": code_version(), "settings": dataclasses.asdict(settings),
            "peak_memory": peak_memory_meaning(device), "results": [dataclasses.asdict(r) for r in results]}

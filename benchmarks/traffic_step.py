"""What one graphed paper-best training step asks of a GPU's memory and matrix units, counted on the CPU (issue 7).

    python benchmarks/traffic_step.py --json benchmarks/traffic_step.json
    python benchmarks/traffic_step.py --batch-size 32 --boxes 36 --precision fp32 --rows 20

Without a GPU the step's time cannot be measured, but its work can be counted. This runs the step `ban train
--set cuda_graphs=true` replays (paper-best BAN-8, ``static_batch``'s inputs, capture-safe layers, autocast
without its cast cache, BCE, backward, gradient norm, clipping + Adamax as ``AdamaxUpdate`` — ban's CPU kernels
off) once on the CPU under a dispatch recorder: every ATen operator that would be a kernel, with the bytes its
tensors read and write and the matrix-product FLOPs (``torch.utils.flop_counter``'s formulas). Dropout takes the
fused route a GPU takes (``aten.native_dropout``: one kernel writing the output and a bool mask); on the CPU
``F.dropout`` would decompose into draws, multiplies and divisions a GPU does not run.

A roofline then prices each operator on a card: max(bytes ÷ bandwidth, FLOPs ÷ matrix rate) plus a fixed gap per
kernel in a graph replay, all three assumptions on the command line (defaults: an H200 — 4.8 TB/s HBM3e at 80 %,
989 dense bf16 TFLOP/s at 60 %, 1.5 µs per kernel). It is a model, not a measurement: bytes count each tensor
once per operator (caches and fusions inside cuBLAS/cuDNN ignored), strided views count their elements. Its use
is to rank where the step's device time must go and to set the prediction a device run then checks.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from ban import kernels
from ban.benchmark import BenchSettings, synthetic_batches
from ban.engine.config import TrainConfig
from ban.engine.graphs import compiled_forward, initialise_optimizer, static_batch, training_step
from ban.engine.optim import AdamaxUpdate
from ban.machine import code_version, describe_machine
from ban.models import build_model
from ban.nn.capture import capture_safe

# operators that only re-describe memory (no kernel on a GPU)
METADATA_OPS = {
    "view", "_unsafe_view", "reshape", "expand", "transpose", "t", "permute", "slice", "select", "unsqueeze",
    "squeeze", "as_strided", "alias", "detach", "split", "split_with_sizes", "unbind", "chunk", "narrow",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "_reshape_alias",
    "unflatten", "flatten", "view_as", "diagonal", "movedim", "lift_fresh_copy", "set_", "resize_",
}


@dataclass
class OpRecord:
    kernels: int = 0
    read: int = 0  # bytes
    written: int = 0
    flops: float = 0.0
    shapes: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # input shapes → bytes read

    def totals(self) -> dict[str, float]:
        return {"kernels": self.kernels, "read": self.read, "written": self.written, "flops": self.flops}


def tensor_bytes(value: object) -> int:
    """Bytes an operator touches in ``value``: its elements (a stride-0 expansion counts its storage once)."""
    if not isinstance(value, torch.Tensor):
        return 0
    elements = value.numel()
    if any(stride == 0 for stride, size in zip(value.stride(), value.shape, strict=True) if size > 1):
        elements = min(elements, value.untyped_storage().nbytes() // max(value.element_size(), 1))
    return elements * value.element_size()


class TrafficRecorder(TorchDispatchMode):
    """Counts, per (phase, operator), the kernels, bytes read and written and matrix-product FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.backward_seen = False
        self.records: dict[tuple[str, str], OpRecord] = defaultdict(OpRecord)

    def phase(self) -> str:
        """"forward" (and the loss), "backward" (inside autograd's engine), then "norm+update"."""
        if torch._C._current_autograd_node() is not None:
            self.backward_seen = True
            return "backward"
        return "norm+update" if self.backward_seen else "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in METADATA_OPS:
            return out
        inputs, _ = tree_flatten((args, kwargs))
        outputs, _ = tree_flatten(out)
        record = self.records[(self.phase(), name)]
        record.kernels += 1
        record.read += sum(tensor_bytes(value) for value in inputs)
        record.written += sum(tensor_bytes(value) for value in outputs if not _aliases_input(value, inputs))
        if name.endswith("_"):  # in place: the first argument (a tensor, or a foreach op's list) is written
            record.written += sum(tensor_bytes(value) for value in tree_flatten(args[0])[0])
        if func.overloadpacket in flop_registry:
            record.flops += flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        shapes = ",".join(str(tuple(v.shape)) for v in inputs if isinstance(v, torch.Tensor))[:90]
        record.shapes[shapes] += sum(tensor_bytes(value) for value in inputs)
        return out


def _aliases_input(value: object, inputs: list) -> bool:
    return isinstance(value, torch.Tensor) and any(
        isinstance(i, torch.Tensor) and i.untyped_storage().data_ptr() == value.untyped_storage().data_ptr()
        for i in inputs)


def gpu_like_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """``F.dropout`` as CUDA runs it: ``aten.native_dropout`` (one kernel; its backward another)."""
    if not training or p == 0.0:
        return x
    return torch.native_dropout(x, p, True)[0]


@dataclass
class Workload:
    """The step that is counted: the bench's settings, the precision, the dtype the features arrive in (bf16: as
    ``ban train --set resident=true`` holds them when training in bf16)."""

    settings: BenchSettings
    precision: str
    feature_dtype: torch.dtype = torch.float32


def paper_step(workload: Workload, compile: bool) -> tuple[Callable[[], object], float]:
    """The graphed training step (paper-best BAN, one synthetic batch) as a callable, with the batch's real box
    count; ``compile``: the forward pass and the update through ``torch.compile`` (the bench's "compiled" path)."""
    settings = workload.settings
    torch.manual_seed(settings.seed)
    config = settings.model_config()
    model = build_model(config).train()
    batch = synthetic_batches(settings, config, torch.device("cpu"), count=1)[0]
    real_boxes = float(batch.pop("real_boxes"))
    inputs = static_batch({**batch, "features": batch["features"].to(workload.feature_dtype)})
    optimizer = torch.optim.Adamax(model.parameters(), lr=TrainConfig.lr, foreach=True)
    initialise_optimizer(optimizer)
    update = AdamaxUpdate(optimizer, TrainConfig.grad_clip, compile=compile)
    forward = compiled_forward(model) if compile else None

    def step() -> object:
        return training_step(model, optimizer, inputs, workload.precision, cast_cache=False, forward=forward,
                             update=update)

    return step, real_boxes


def record_step(workload: Workload) -> tuple[TrafficRecorder, float]:
    """The graphed training step's operators, recorded once after a warm-up step → (recorder, real boxes)."""
    step, real_boxes = paper_step(workload, compile=False)
    recorder = TrafficRecorder()
    with kernels.enabled(False), capture_safe(), mock.patch.object(F, "dropout", gpu_like_dropout):
        step()  # warm-up: the optimizer's lazily made tensors
        with recorder:
            step()
    return recorder, real_boxes


@dataclass
class CompiledKernel:
    """One kernel of the compiled step."""

    phase: str  # "forward", "backward" or "update"
    kind: str  # "fused" (generated by Inductor) or "extern" (a library call: the matrix products)
    bytes: int  # Inductor's count: every buffer the kernel touches, whole
    touched: int  # per buffer, the most that one of the kernel's fused loops touches (see record_compiled)
    source: str  # the innermost line of ban's code the kernel computes ("?" where Inductor kept none)


def compiled_kernels(workload: Workload) -> list[CompiledKernel]:
    """The kernels Inductor makes for the compiled step (forward, backward, update): :func:`record_compiled` of
    :func:`paper_step`'s compiled step."""
    return record_compiled(paper_step(workload, compile=True)[0])


def record_compiled(step: Callable[[], object]) -> list[CompiledKernel]:
    """The kernels Inductor makes while ``step`` (which calls ``torch.compile``d code) runs once, compiled afresh
    on the CPU (no cache). Inductor prices a generated kernel's access to a buffer at the whole buffer; a kernel
    that gathers the packed rows of a padded tensor, or reads one step's slice of the GRU's stacked gates, touches
    less: ``touched`` takes, per buffer, the most that any one of the kernel's fused loops touches (loops fused
    side by side over disjoint parts of one buffer are undercounted by it, so the truth lies between the two)."""
    from torch._functorch import config as functorch_config
    from torch._inductor import compile_fx
    from torch._inductor import config as inductor_config
    from torch._inductor.graph import GraphLowering
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    quiet = logging.getLogger("ban.traffic_step.inductor_metrics")  # enabled, so Inductor counts; prints nothing
    quiet.setLevel(logging.INFO)
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    found: list[CompiledKernel] = []
    count_bytes = GraphLowering.count_bytes

    def record_kernels(graph: GraphLowering) -> object:
        phase = "backward" if graph.is_backward else "update" if graph.is_inference else "forward"
        for node in graph.scheduler.nodes:
            if not isinstance(node, NopKernelSchedulerNode):
                kind = "extern" if isinstance(node, ExternKernelSchedulerNode) else "fused"
                found.append(CompiledKernel(phase, kind, *_kernel_bytes(node), _kernel_source(node)))
        return count_bytes(graph)

    with (mock.patch.object(compile_fx, "inductor_metrics_log", quiet),
          mock.patch.object(GraphLowering, "count_bytes", record_kernels),
          inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False),
          kernels.enabled(False), capture_safe()):
        step()
    return found


def _kernel_bytes(node: object) -> tuple[int, int]:
    """(Inductor's bytes, touched bytes) of a scheduler node: see :func:`record_compiled`."""
    accesses = node.get_read_write_buffer_accesses(include_reads=True, include_writes=True)
    loops = [sub.get_read_write_buffer_accesses(include_reads=True, include_writes=True) for sub in node.get_nodes()]
    touched = sum(min(size, max((loop.get(name, 0) for loop in loops), default=0) or size)
                  for name, size in accesses.items())
    return sum(accesses.values()), touched


def _kernel_source(node: object) -> str:
    """``path:line`` (under src/ban) of the innermost frame of ban's code that most of the node's operations come
    from, by the stack traces Dynamo recorded; "?" when there is none."""
    lines: dict[str, int] = defaultdict(int)
    for sub in node.get_nodes():
        for origin in getattr(sub.node, "origins", None) or ():
            frames = re.findall(r'File "[^"]*/ban/([^"]+)", line (\d+)', origin.meta.get("stack_trace") or "")
            if frames:
                lines[":".join(frames[-1])] += 1
    return max(lines, key=lines.get) if lines else "?"


@dataclass
class Card:
    """The roofline a step is priced on."""

    bandwidth: float  # bytes/s
    flop_rate: float  # matrix FLOP/s
    gap: float  # s per kernel

    def seconds(self, record: OpRecord) -> float:
        return max((record.read + record.written) / self.bandwidth, record.flops / self.flop_rate) \
            + record.kernels * self.gap


MATRIX_OPS = ("mm", "bmm", "addmm", "baddbmm")  # library calls in a compiled graph too


def compiled_estimate(found: list[CompiledKernel], recorder: TrafficRecorder, card: Card) -> dict[str, float]:
    """The compiled step priced on ``card``: Inductor's fused kernels by their bytes (``modelled_ms``: Inductor's
    count; ``modelled_ms_touched``: the bytes their loops touch), its library calls (the matrix products) as the
    eager step's matrix products cost."""
    fused = [kernel for kernel in found if kernel.kind == "fused"]
    matrix_seconds = sum(card.seconds(r) - r.kernels * card.gap for (_, name), r in recorder.records.items()
                         if name in MATRIX_OPS)
    fixed = matrix_seconds + len(found) * card.gap
    moved, touched = sum(k.bytes for k in fused), sum(k.touched for k in fused)
    return {"kernels": len(found), "fused_kernels": len(fused), "fused_bytes": moved, "fused_bytes_touched": touched,
            "matrix_ms": 1e3 * matrix_seconds, "modelled_ms": 1e3 * (moved / card.bandwidth + fixed),
            "modelled_ms_touched": 1e3 * (touched / card.bandwidth + fixed)}


def by_source(found: list[CompiledKernel]) -> list[dict[str, object]]:
    """The generated kernels grouped by phase and source line, most bytes first."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for kernel in found:
        if kernel.kind == "fused":
            group = groups[(kernel.phase, kernel.source)]
            group[0] += 1
            group[1] += kernel.bytes
            group[2] += kernel.touched
    return [{"phase": phase, "source": source, "kernels": count, "bytes": moved, "touched": touched}
            for (phase, source), (count, moved, touched) in sorted(groups.items(), key=lambda item: -item[1][1])]


def phase_totals(recorder: TrafficRecorder) -> dict[str, OpRecord]:
    totals: dict[str, OpRecord] = defaultdict(OpRecord)
    for (phase, _), record in recorder.records.items():
        total = totals[phase]
        total.kernels += record.kernels
        total.read += record.read
        total.written += record.written
        total.flops += record.flops
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--boxes", default="adaptive", help="a fixed count or 'adaptive' (10–100, mean ≈ 31)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--feature-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the features' dtype as the batch brings them (bfloat16: `ban train --set "
                             "resident=true` in bf16; default: float32, as `ban bench` makes them)")
    parser.add_argument("--bandwidth", type=float, default=4.8e12 * 0.8, help="bytes/s (default: H200 at 80 %%)")
    parser.add_argument("--flop-rate", type=float, default=989e12 * 0.6,
                        help="matrix FLOP/s (default: H200 dense bf16 at 60 %%)")
    parser.add_argument("--gap-us", type=float, default=1.5, help="µs per kernel in a graph replay")
    parser.add_argument("--compiled", action="store_true",
                        help="also compile the step afresh (minutes) and price Inductor's kernels")
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    workload = Workload(BenchSettings(batch_size=args.batch_size, boxes=args.boxes), args.precision,
                        getattr(torch, args.feature_dtype))
    card = Card(args.bandwidth, args.flop_rate, args.gap_us * 1e-6)
    recorder, real_boxes = record_step(workload)
    phases = phase_totals(recorder)
    phase_seconds: dict[str, float] = defaultdict(float)
    for (phase, _), record in recorder.records.items():
        phase_seconds[phase] += card.seconds(record)
    step_seconds = sum(phase_seconds.values())
    rows = sorted(recorder.records.items(), key=lambda item: -card.seconds(item[1]))

    print(f"{describe_machine(torch.device('cpu'))}")
    print(f"paper-best BAN-8, batch {args.batch_size}, boxes {args.boxes} ({real_boxes:.0f} real), {args.precision}, "
          f"{args.feature_dtype} features; "
          f"card model: {args.bandwidth / 1e12:.2f} TB/s, {args.flop_rate / 1e12:.0f} TFLOP/s, {args.gap_us} µs/kernel")
    print("\n| eager graphed step | kernels | GB moved | TFLOP | modelled ms |\n| --- | ---: | ---: | ---: | ---: |")
    for phase, record in phases.items():
        print(f"| {phase} | {record.kernels} | {(record.read + record.written) / 1e9:.2f} | "
              f"{record.flops / 1e12:.3f} | {1e3 * phase_seconds[phase]:.2f} |")
    print(f"\nmodelled eager graphed step: {1e3 * step_seconds:.2f} ms = {args.batch_size / step_seconds:,.0f} q/s")
    print("\n| phase | operator | kernels | GB read | GB written | GFLOP | modelled ms | input shapes reading most |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for (phase, name), record in rows[: args.rows]:
        shapes = max(record.shapes.items(), key=lambda item: item[1])[0]
        print(f"| {phase} | {name} | {record.kernels} | {record.read / 1e9:.3f} | {record.written / 1e9:.3f} | "
              f"{record.flops / 1e9:.1f} | {1e3 * card.seconds(record):.3f} | {shapes} |")
    report = {
        "machine": describe_machine(torch.device("cpu")), "code": code_version(),
        "card_model": "the --bandwidth, --flop-rate and --gap-us of settings (default: an H200)",
        "settings": {**vars(args), "real_boxes": real_boxes},
        "eager": {"modelled_ms": 1e3 * step_seconds, "modelled_questions_per_s": args.batch_size / step_seconds,
                  "phases": {phase: {**r.totals(), "modelled_ms": 1e3 * phase_seconds[phase]}
                             for phase, r in phases.items()},
                  "operators": [{"phase": phase, "operator": name, **r.totals(),
                                 "modelled_ms": 1e3 * card.seconds(r)} for (phase, name), r in rows]},
    }
    if args.compiled:
        found = compiled_kernels(workload)
        compiled = compiled_estimate(found, recorder, card)
        report["compiled"] = {**compiled, "modelled_questions_per_s": args.batch_size / compiled["modelled_ms"] * 1e3,
                              "modelled_questions_per_s_touched":
                                  args.batch_size / compiled["modelled_ms_touched"] * 1e3,
                              "by_source": by_source(found)}
        print(f"\ncompiled (Inductor, CPU codegen): {compiled['kernels']} kernels ({compiled['fused_kernels']} "
              f"generated, moving {compiled['fused_bytes'] / 1e9:.2f} GB by Inductor's count, "
              f"{compiled['fused_bytes_touched'] / 1e9:.2f} GB touched; the rest library calls priced as the eager "
              f"matrix products, {compiled['matrix_ms']:.2f} ms) → modelled {compiled['modelled_ms']:.2f} ms "
              f"= {report['compiled']['modelled_questions_per_s']:,.0f} q/s ({compiled['modelled_ms_touched']:.2f} ms "
              f"by the bytes touched)")
        print("\n| phase | source line | generated kernels | GB (Inductor) | GB touched |")
        print("| --- | --- | ---: | ---: | ---: |")
        for group in report["compiled"]["by_source"][: args.rows]:
            print(f"| {group['phase']} | {group['source']} | {group['kernels']} | {group['bytes'] / 1e9:.3f} | "
                  f"{group['touched'] / 1e9:.3f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()

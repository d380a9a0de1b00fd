"""Where one paper-best training step spends its time: torch.profiler's table of operators (issue 7).

    python benchmarks/profile_step.py                       # batch 32, 36 boxes, bf16 autocast, CPU
    python benchmarks/profile_step.py --precision fp32 --boxes adaptive --rows 40 --by-shape
    python benchmarks/profile_step.py --glibc-default-heap --rows 0     # without ban.heap's malloc settings

Times ``--steps`` steps after two warm-up steps (median and minimum, seconds; page faults and system time per
step) with the step of `ban bench` (forward, BCE, backward, clip 0.25, Adamax as `ban train` builds it), then
profiles one more step and prints its operators by self time.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ban.benchmark import BenchSettings, step_loop, synthetic_batches
from ban.engine.config import resolve_device
from ban.heap import keep_freed_memory
from ban.machine import describe_machine
from ban.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--boxes", default="36", help="a fixed count or 'adaptive'")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=7, help="timed steps before the profiled one")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--by-shape", action="store_true", help="group the operators by input shapes too")
    parser.add_argument("--glibc-default-heap", action="store_true",
                        help="leave glibc's malloc as it is (`ban` calls ban.heap.keep_freed_memory at start)")
    args = parser.parse_args()
    if not args.glibc_default_heap:
        keep_freed_memory()

    device = resolve_device("auto")
    settings = BenchSettings(batch_size=args.batch_size, boxes=args.boxes)
    torch.manual_seed(settings.seed)
    config = settings.model_config()
    model = build_model(config).to(device)
    steps = step_loop(model, synthetic_batches(settings, config, device, count=2), "train", args.precision, device)
    for _ in range(2):
        next(steps)
    seconds, faults, system = [], [], []
    for _ in range(args.steps):
        before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        next(steps)
        seconds.append(time.perf_counter() - began)
        after = resource.getrusage(resource.RUSAGE_SELF)
        faults.append(after.ru_minflt - before.ru_minflt)
        system.append(after.ru_stime - before.ru_stime)
    print(f"{describe_machine(device)}; step median {statistics.median(seconds):.3f} s, min {min(seconds):.3f} s; "
          f"per step: {min(faults):,}–{max(faults):,} page faults, {min(system):.3f}–{max(system):.3f} s of system "
          "time (all threads)")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as profiler:
        next(steps)
    table = profiler.key_averages(group_by_input_shape=args.by_shape)
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()

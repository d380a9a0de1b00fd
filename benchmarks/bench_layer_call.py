"""The Python cost of one `WeightNormLinear` call (session 16: its input checks), timed on a tiny input.

    python benchmarks/bench_layer_call.py [--calls 20000] [--repeats 5] [--json FILE]
    PYTHONPATH=<checkout of another commit>/src python benchmarks/bench_layer_call.py   # the same call, other code

A [4, 8] bf16 input into an 8 → 8 layer under CPU bf16 autocast with ban's kernels on, one thread: the arithmetic is
negligible, so the time is the call's own overhead (its checks included). Reports the minimum over ``--repeats`` of
the mean over ``--calls`` calls, in µs; run it alternately on two commits to compare them.
"""

from __future__ import annotations

import argparse
import json
import timeit
from pathlib import Path

import torch

from ban import kernels
from ban.machine import code_version, describe_machine
from ban.nn.fc import WeightNormLinear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    layer = WeightNormLinear(8, 8)
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), kernels.enabled(True):
        for _ in range(100):  # warm-up
            layer(x)
        best = min(timeit.repeat(lambda: layer(x), number=args.calls, repeat=args.repeats)) / args.calls
    print(f"{describe_machine()}; code {code_version()}")
    print(f"| WeightNormLinear call, [4, 8] bf16 under autocast, kernels on | {best * 1e6:.1f} µs |")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(), "code": code_version(),
                                         "microseconds_per_call": best * 1e6}, indent=2))


if __name__ == "__main__":
    main()

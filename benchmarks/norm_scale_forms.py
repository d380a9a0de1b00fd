"""Per-call cost of weight normalisation's scalar ``g / ‖V‖`` in the two forms of ``torch.autograd.Function``.

    python benchmarks/norm_scale_forms.py                 # 16×16 and 1280×2048 directions, one torch thread
    python benchmarks/norm_scale_forms.py --json out.json

``ban.nn.fc`` writes the Function with ``ctx`` in ``forward`` (what ban runs) and takes autograd's own norm under
``torch.func``'s transforms, because the ``forward`` + ``setup_context`` form that those transforms need costs
more on every call. This script measures both forms, with the same backward, on a forward + backward through
``WeightNormLinear``-sized directions: the per-call overhead matters for small models and eager GPU steps, where
the Python side of ~45 layer calls per step is not hidden behind the arithmetic.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from torch import Tensor

from ban.machine import code_version, describe_machine
from ban.nn.fc import norm_scale


class SetupContextNormScale(torch.autograd.Function):
    """The same scalar and gradients in the ``setup_context`` form (what ``torch.func`` transforms require): the
    norm is a second, non-differentiable output, as ``forward`` has no ``ctx`` to keep it in."""

    @staticmethod
    def forward(direction: Tensor, gain: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(direction.device.type, enabled=False):
            norm = torch.linalg.vector_norm(direction)
            return gain / norm, norm

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: tuple[Tensor, Tensor]) -> None:
        scale, norm = output
        ctx.mark_non_differentiable(norm)
        ctx.save_for_backward(inputs[0], norm, scale)

    @staticmethod
    def backward(ctx: Any, grad_scale: Tensor, _: Tensor | None) -> tuple[Tensor, Tensor]:
        direction, norm, scale = ctx.saved_tensors
        return direction * (-grad_scale * scale / norm.square()), grad_scale / norm


FORMS = {"ctx in forward (ban)": norm_scale,
         "setup_context": lambda direction, gain: SetupContextNormScale.apply(direction, gain)[0]}


def microseconds_per_call(form: Any, rows: int, columns: int, calls: int, repeats: int) -> float:
    """Best of ``repeats`` timings of ``calls`` forward + backward passes of ``form`` → µs per pass."""
    direction = torch.randn(rows, columns, requires_grad=True)
    gain = torch.tensor(2.0, requires_grad=True)
    for _ in range(calls // 10):
        form(direction, gain).backward()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            form(direction, gain).backward()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"{'direction':>12}  {'form':<22}  µs per forward + backward")
    for shape in ((16, 16), (1280, 2048)):
        calls = args.calls if shape == (16, 16) else max(args.calls // 30, 10)
        for name, form in FORMS.items():
            cost = microseconds_per_call(form, *shape, calls, args.repeats)
            rows.append({"shape": list(shape), "form": name, "microseconds": round(cost, 1)})
            print(f"{'×'.join(map(str, shape)):>12}  {name:<22}  {cost:8.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": describe_machine(), "code": code_version(), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()

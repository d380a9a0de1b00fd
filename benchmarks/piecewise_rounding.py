"""How far the counting module's piecewise-linear functions are from their float64 values, compiled CPU kernel
against PyTorch's dense form (an accuracy check, not a timing).

    python benchmarks/piecewise_rounding.py                 # 200 random weight vectors + the reference fixture
    python benchmarks/piecewise_rounding.py --json out.json

For each weight vector, f is evaluated at 1,005 points of [0, 1] (1,000 uniform draws, both ends and three knots)
by the kernel (``ban.kernels.enabled``) and by the dense form, and compared with f computed in float64 from the
same float32 weights. The vectors are 200 random ones (seed 0, entries in [0, 3)) and the 16 functions of the
counting module of ``tests/fixtures/official/ban_vqa_g4_h32_c.pth`` (trained by the authors' code).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ban import kernels
from ban.machine import code_version, describe_machine
from ban.nn.counting import PiecewiseLinear
from ban.official import load_official_checkpoint

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "official" / "ban_vqa_g4_h32_c.pth"


def largest_errors(weights: list[torch.Tensor], points: torch.Tensor) -> dict[str, float]:
    """The largest |f(x) − f₆₄(x)| over ``weights`` (each [n + 1] float32) and ``points`` [P], per form."""
    errors = {"kernel": 0.0, "dense": 0.0}
    for weight in weights:
        function = PiecewiseLinear(weight.numel() - 1)
        with torch.no_grad():
            function.weight.copy_(weight)
            slopes = weight.double().abs() / weight.double().abs().sum()
            ramps = (function.num_segments * points.double().unsqueeze(-1)
                     - torch.arange(function.num_segments, dtype=torch.float64)).clamp(0, 1)
            exact = slopes[0] + ramps @ slopes[1:]
            with kernels.enabled(True):
                compiled = function(points)
            dense = function(points)
        errors["kernel"] = max(errors["kernel"], float((compiled.double() - exact).abs().max()))
        errors["dense"] = max(errors["dense"], float((dense.double() - exact).abs().max()))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.rand(1000, generator=generator), torch.tensor([0.0, 1.0, 0.5, 1 / 16, 15 / 16])])
    random_weights = [torch.rand(17, generator=generator) * 3 for _ in range(200)]
    counter = load_official_checkpoint(FIXTURE).counter
    fixture_weights = [function.weight.detach().clone() for function in counter.functions]
    results = {"random (200 vectors)": largest_errors(random_weights, points),
               f"fixture {FIXTURE.stem} ({len(fixture_weights)} functions)": largest_errors(fixture_weights, points)}
    print(f"{describe_machine(torch.device('cpu'))}; code {code_version()}")
    print("| weights | kernel − float64 | dense − float64 |\n| --- | ---: | ---: |")
    for name, errors in results.items():
        print(f"| {name} | {errors['kernel']:.3e} | {errors['dense']:.3e} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(torch.device("cpu")), "code": code_version(),
                                         "largest_abs_error": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The one prepared GPU check of issue 7: correctness on the GPU, then `ban bench` at paper size.

Run on the device machine from the repository root (the package need not be installed there):

    PYTHONPATH=src python benchmarks/device_check.py --out "$OUT"

1. Correctness: a paper-best model with random weights, evaluated on the CPU (fp32) and on the GPU (fp32 with
   TF32 off, and bf16 autocast), fused and plain paths: the max abs difference of the logits.
2. Throughput: the table of `ban bench` (batch 256, adaptive boxes 10–100, 14 tokens), written as JSON too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ban.benchmark import BenchSettings, as_json, format_table, run_all, synthetic_batches
from ban.models import build_model, preset


def parity(device: torch.device) -> list[dict]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    torch.manual_seed(0)
    reference = build_model(preset("paper-best")).eval()
    batch = synthetic_batches(BenchSettings(batch_size=16), reference.config, torch.device("cpu"), count=1)[0]
    with torch.no_grad():
        expected = reference(batch["features"], batch["boxes"], batch["questions"]).logits
    for fused in (True, False):
        model = build_model(reference.config.replace(fused=fused)).to(device).eval()
        model.load_state_dict(reference.state_dict())
        inputs = [batch[key].to(device) for key in ("features", "boxes", "questions")]
        for precision in ("fp32", "bf16"):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(*inputs).logits.float().cpu()
            rows.append({"path": "fused" if fused else "plain", "precision": precision,
                         "max_abs_diff_vs_cpu_fp32": float((logits - expected).abs().max())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    device = torch.device("cuda")
    checks = parity(device)
    for row in checks:
        print(row)
    settings = BenchSettings(steps=args.steps, warmup=5, device="cuda")
    results = run_all(settings, ["fused", "plain"], ["fp32", "bf16"], ["train", "infer"])
    print(format_table(results))
    report = {**as_json(settings, results), "parity": checks}
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""The one prepared GPU check of issue 7: correctness on the GPU, then `ban bench` at paper size.

Run on the device machine from the repository root (the package need not be installed there):

    PYTHONPATH=src python benchmarks/device_check.py --out "$OUT"
    python benchmarks/device_check.py --out /tmp/dry --device cpu --batch-size 4 --steps 1   # a dry run here

1. Correctness: a paper-best model with random weights, evaluated on the CPU (fp32) and on the GPU (fp32 with
   TF32 off, and bf16 autocast), fused and plain paths: the max abs difference of the logits.
2. Throughput: the table of `ban bench` (batch 256, adaptive boxes 10–100, 14 tokens), written as JSON too;
   then the bf16 plain training step again with `--host-sync` (what `ban train`'s per-step finiteness read costs).
3. Resident data (`--set resident=true`): a small synthetic prepared VQA set held on the GPU gives the loader's
   batches exactly; the gather rate of batch-256 rows (adaptive boxes) from a 2,048-d bf16 table of 400k regions.
   Reported as skipped, with the reason, when the data modules cannot be imported there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from ban.benchmark import BenchSettings, as_json, box_counts, format_table, run_all, synthetic_batches
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident_check(device: torch.device) -> dict:
    """Gathered batches on the GPU against the collated ones (float32: must be equal), and the gather rate."""
    try:
        from ban.data.collate import collate_vqa
        from ban.data.resident import ResidentVQA
        from ban.data.synthetic import generate
        from ban.data.vqa2 import prepare_vqa2
        from ban.engine.tasks import VQATask
    except ImportError as error:
        return {"skipped": f"cannot import the data modules: {error}"}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        generate(root / "raw", seed=0, num_images=56, feature_dim=2048, flickr_images=0, write_images=False,
                 workers=1, progress=False)
        prepare_vqa2(root / "raw" / "vqa", sorted((root / "raw" / "features").glob("*.tsv")), root / "prepared",
                     progress=False)
        dataset = VQATask(root / "prepared").dataset(["train", "val"])
        resident = ResidentVQA(dataset, device)
        indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:64].tolist()
        expected, gathered = collate_vqa([dataset[i] for i in indices]), resident.batch(indices)
        equal = {key: bool(torch.equal(gathered[key].cpu(), value)) for key, value in expected.items()}
    table = torch.randn(400_000, 2048, device=device).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(1)
    row_sets = []
    for _ in range(20):
        counts = box_counts(BenchSettings(), generator)
        starts = torch.randint(0, 400_000 - 100, (len(counts),), generator=generator)
        row_sets.append((starts[:, None] + torch.arange(int(counts.max()))[None, :]).to(device))
    table[row_sets[0]]
    synchronize(device)
    began = time.perf_counter()
    for rows in row_sets:
        table[rows]
    synchronize(device)
    seconds = (time.perf_counter() - began) / len(row_sets)
    return {"batch_equal_to_collate": equal, "gather_ms_per_batch_256": 1000 * seconds,
            "gather_questions_per_s": 256 / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu for a dry run of the script")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    checks = parity(device)
    for row in checks:
        print(row)
    settings = BenchSettings(batch_size=args.batch_size, steps=args.steps, warmup=min(5, args.steps),
                             device=args.device)
    results = run_all(settings, ["fused", "plain"], ["fp32", "bf16"], ["train", "infer"])
    print(format_table(results))
    report = {**as_json(settings, results), "parity": checks}
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2))
    synced = dataclasses.replace(settings, host_sync=True)
    report["host_sync"] = as_json(synced, run_all(synced, ["plain"], ["bf16"], ["train"]))["results"]
    print("with the trainer's host sync:", report["host_sync"])
    report["resident"] = resident_check(device)
    print(report["resident"])
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

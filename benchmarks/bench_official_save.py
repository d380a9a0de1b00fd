"""What writing a paper-size checkpoint in the authors' format costs: ``ban.save_official_checkpoint`` (torch's
pre-1.6 format, every byte written through Python so that a full disk is a clear error) against ``torch.save`` of
the same dict in torch's zip format to a path (how it was written before session 21), and each file's load
(``torch.load(weights_only=True)``).

The workload: the ``paper-best`` model (BAN-8, hidden 1280, option c, counting; 19,901 tokens, 3,129 answers:
90.6 M parameters, ≈ 346 MiB of float32), random weights, written to a temporary folder; best of ``--repeats``.

    python benchmarks/bench_official_save.py --json benchmarks/bench_official_save.json
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from bench_json_read import best_seconds  # benchmarks/ is the script's directory

import ban
from ban.machine import code_version, describe_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ban.build_model(ban.preset("paper-best"))
    state = OrderedDict((f"module.{key}", value) for key, value in ban.to_official_state_dict(model).items())
    writers = {
        "save_official_checkpoint (pre-1.6 format, through Python)":
            lambda path: ban.save_official_checkpoint(model, path),
        "torch.save to a path (zip format, before)": lambda path: torch.save({"epoch": 0, "model_state": state}, path),
    }
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, write in writers.items():
            path = Path(scratch) / "model.pth"
            row = {"writer": name, "write_s": best_seconds(functools.partial(write, path), args.repeats),
                   "load_s": best_seconds(functools.partial(torch.load, path, weights_only=True), args.repeats),
                   "mib": path.stat().st_size / 2**20}
            rows.append(row)
            print(f"{name:58s} write {row['write_s']:6.2f} s   load {row['load_s']:6.2f} s   {row['mib']:7.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(), "code": code_version(),
                                         "parameters": sum(p.numel() for p in model.parameters()),
                                         "repeats": args.repeats, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

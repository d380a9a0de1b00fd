"""The README's first command, measured: `ban train` with no arguments (tiny BAN on the synthetic scenes).

Runs the command in a fresh cache (so the time includes generating and preparing the scenes) unless
``--cache`` points at an existing one, then reports wall time, CPU time, the final val accuracy and the
question-only baseline of the generator (stats.json), and writes them as JSON.

    python benchmarks/bench_train_synthetic.py --json benchmarks/bench_train_synthetic.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ban.machine import code_version, describe_machine


def machine() -> str:
    load = os.getloadavg()[0]
    return (f"{describe_machine()}, load average {load:.1f} at start, Python {platform.python_version()}, "
            f"{code_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="BAN_CACHE to use (default: a fresh temporary one)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("extra", nargs="*", help="extra `ban train` arguments (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache or Path(scratch) / "cache"
        run_dir = Path(scratch) / "run"
        env = {**os.environ, "BAN_CACHE": str(cache)}
        host = machine()
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ban.cli", "train", "--out", str(run_dir), *args.extra], env=env,
                       check=True)
        wall = time.perf_counter() - began
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        stats = json.loads(next(cache.glob("synthetic-*/raw/stats.json")).read_text())
    result = {
        "command": " ".join(["ban train", *args.extra]),
        "machine": host,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset (torch default)"),
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "epochs": len(history),
        "val_overall": history[-1]["val"]["overall"],
        "val_per_answer_type": history[-1]["val"]["perAnswerType"],
        "question_only_baseline": stats["baselines"]["question_only"]["overall"],
        "answer_prior_baseline": stats["baselines"]["answer_prior"]["overall"],
        "val_overall_per_epoch": [record["val"]["overall"] for record in history],
        "train_seconds_per_epoch": [round(record["seconds"], 1) for record in history],
    }
    print(f"machine: {host}")
    print(f"{'wall s':>8} {'cpu s':>8} {'epochs':>7} {'val %':>7} {'question-only %':>16}")
    print(f"{result['wall_s']:>8} {result['cpu_s']:>8} {result['epochs']:>7} {result['val_overall']:>7} "
          f"{result['question_only_baseline']:>16}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""benchmarks/bench_hdf5_read.py runs end to end on a small cache and reports every reading it times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_hdf5_read.py"


def test_the_hdf5_read_benchmark_runs_and_reports_both_sources(tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARK), "--images", "30", "--dim", "8", "--repeats", "1",
                             "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "out.json")],
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["images"] == 30 and report["boxes"] >= 30 * 10
    for source in ("hdf5", "store"):
        rates = report["images_per_s"][source]
        assert rates and all(value["median"] > 0 for value in rates.values()), rates
    assert "HDF5 cache" in result.stdout and "boxes()" in result.stdout

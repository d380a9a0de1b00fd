"""The feature-reading benchmarks run end to end on small inputs and report what they measured, consistently:
benchmarks/bench_features.py (a TSV) and benchmarks/bench_hdf5_read.py (the authors' HDF5 cache)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, tmp_path: Path, *options: str) -> tuple[dict, str]:
    """(the JSON it wrote, its stdout) of ``benchmarks/<script> <options> --workdir … --json …``."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *options, "--workdir", str(tmp_path / "work"),
                             "--json", str(tmp_path / "out.json")],
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "out.json").read_text()), result.stdout


def test_the_feature_benchmark_runs_and_its_passes_see_every_image(tmp_path):
    report, stdout = run_benchmark("bench_features.py", tmp_path, "--size-gb", "0.003", "--dim", "64", "--samples",
                                   "50")
    images = report["tsv"]["images"]
    assert images > 1 and report["conversion"]["images"] == images
    assert report["image_id_pass"]["images"] == report["image_id_pass_line_by_line"]["images"] == images
    assert "image-id pass, jumping" in stdout and report["page_cache"] == "warm"


def test_the_hdf5_read_benchmark_runs_and_reports_both_sources(tmp_path):
    report, stdout = run_benchmark("bench_hdf5_read.py", tmp_path, "--images", "30", "--dim", "8", "--repeats", "1")
    assert report["images"] == 30 and report["boxes"] >= 30 * 10
    for source in ("hdf5", "store"):
        rates = report["images_per_s"][source]
        assert rates and all(value["median"] > 0 for value in rates.values()), rates
    assert "HDF5 cache" in stdout and "boxes()" in stdout

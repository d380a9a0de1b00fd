"""benchmarks/bench_features.py runs end to end on a small TSV and reports what it measured, consistently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_features.py"


def test_the_feature_benchmark_runs_and_its_passes_see_every_image(tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARK), "--size-gb", "0.003", "--dim", "64", "--samples", "50",
                             "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "out.json")],
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    images = report["tsv"]["images"]
    assert images > 1 and report["conversion"]["images"] == images
    assert report["image_id_pass"]["images"] == report["image_id_pass_line_by_line"]["images"] == images
    assert "image-id pass, jumping" in result.stdout and report["page_cache"] == "warm"

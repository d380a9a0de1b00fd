"""benchmarks/bench_epoch.py runs end to end on a small prepared dataset and projects the paper's schedule from
what it measured, with the arithmetic its docstring states."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_dataset

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_epoch.py"


@pytest.mark.slow
def test_the_epoch_benchmark_measures_the_loader_and_projects_train_val_and_vg(tmp_path):
    data = make_dataset(tmp_path, seed=5)
    result = subprocess.run([sys.executable, str(BENCHMARK), "--data", str(data), "--batch-size", "4",
                             "--step-batches", "1", "--vg-questions", "1000", "--resident", "--bucket",
                             "--json", str(tmp_path / "out.json")],
                            capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out.json").read_text())
    rows = {(row["workers"], row["bucket"]): row for row in report["loader"]}
    assert set(rows) == {(0, False), (0, True), ("resident", False), ("resident", True)}
    questions = json.loads((data / "manifest.json").read_text())["splits"]["train"]["questions"]
    assert {row["questions"] for row in rows.values()} == {questions}
    for workers in (0, "resident"):  # buckets of similar box counts pad less than the shuffled batches
        assert rows[(workers, True)]["mean_padded_boxes"] < rows[(workers, False)]["mean_padded_boxes"]
    loader = rows[(0, False)]  # the projection's: no workers, no buckets, as `ban train` by default
    step, plan = report["paper_best_step"], report["projection"]
    per_question = step["ms_per_step"] / 1000 / 4 + 1 / loader["questions_per_s"]
    assert plan["seconds_per_question"] == pytest.approx(per_question)
    trainval = 443_757 + 214_354
    assert plan["paper_schedule_trainval_hours"] == pytest.approx(13 * trainval * per_question / 3600)
    assert plan["paper_schedule_trainval_vg_hours"] == pytest.approx(13 * (trainval + 1000) * per_question / 3600)
    assert plan["loader_feature_dim"] == 16 and "on train+val+VG (1,000 VG questions)" in result.stdout

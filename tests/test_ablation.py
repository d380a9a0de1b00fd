"""`ban ablate`: every variant trained and scored, the table's numbers are the runs' numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ban.cli import main
from ban.engine.ablation import AblationResult, AblationSettings, RunResult, markdown_table, variants


def test_variants_cover_unitary_and_each_ban_with_and_without_counting() -> None:
    names = [v.name for v in variants((1, 4, 8), 2)]
    assert names == ["unitary-g2", "ban-1", "ban-1-counting", "ban-4", "ban-4-counting", "ban-8", "ban-8-counting"]


def test_table_is_mean_and_sample_std_over_seeds() -> None:
    settings = AblationSettings(seeds=(1, 2), glimpses=(1,))
    runs = [RunResult("unitary-g2", 1, 40.0, {"yes/no": 60.0, "number": 20.0, "other": 10.0}, 1000, 1.0, "a"),
            RunResult("unitary-g2", 2, 60.0, {"yes/no": 70.0, "number": 30.0, "other": 20.0}, 1000, 1.0, "b"),
            RunResult("ban-1", 1, 50.0, {"yes/no": 80.0, "number": 25.0, "other": 30.0}, 2500, 1.0, "c"),
            RunResult("ban-1", 2, 52.0, {"yes/no": 82.0, "number": 27.0, "other": 36.0}, 2500, 1.0, "d")]
    table = markdown_table(AblationResult(settings, runs, machine="test machine", seconds=60.0))
    lines = table.splitlines()
    # std of (40, 60) = sqrt(((−10)² + 10²) / 1) = 14.14; of (50, 52) = 1.41; of (30, 36) = 4.24
    assert lines[2] == ("| unitary attention (G=2) | – | 1,000 | 50.00 ± 14.14 | 65.00 ± 7.07 | 25.00 ± 7.07 "
                        "| 15.00 ± 7.07 |")
    assert lines[3] == "| BAN-1 | no | 2,500 | 51.00 ± 1.41 | 81.00 ± 1.41 | 26.00 ± 1.41 | 33.00 ± 4.24 |"
    assert len(lines) == 6  # ban-1-counting has no runs: no row
    assert "seeds 1, 2" in table and "test machine" in table
    assert "summed over the runs 0.1 min (this invocation 1.0 min" in table  # 4 runs of 1 s; 60 s wall


@pytest.mark.slow
def test_ablate_command_on_a_minuscule_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BAN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ablation"
    assert main(["ablate", "--out", str(out), "--glimpses", "1", "--seeds", "3", "--epochs", "1", "--images", "20",
                 "--hidden", "16", "--feature-dim", "16"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "ablation.json").read_text())
    assert [(run["variant"], run["seed"]) for run in result["runs"]] == [
        ("unitary-g2", 3), ("ban-1", 3), ("ban-1-counting", 3)]
    table = (out / "ablation.md").read_text()
    assert printed.strip().endswith(table.strip())
    for row, label in zip(table.splitlines()[2:5], ("| unitary attention (G=2) | – |", "| BAN-1 | no |",
                                                    "| BAN-1 | yes |"), strict=True):
        assert row.startswith(label)
    for run in result["runs"]:
        # the reported scores are the ones the run itself recorded after its last epoch
        history = [json.loads(line) for line in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert len(history) == 1
        assert run["overall"] == history[-1]["val"]["overall"]
        config = json.loads((Path(run["run_dir"]) / "config.json").read_text())
        assert config["train"]["seed"] == 3 and config["model"]["hidden_dim"] == 16
        assert config["model"]["use_counting"] == run["variant"].endswith("counting")
        assert f"| {run['overall']:.2f} |" in table  # one seed: no spread to show
    # a second call reuses the finished runs instead of training them again
    def written(run_dir: str) -> dict[str, int]:  # the checkpoint and the report's pictures
        files = [Path(run_dir) / "checkpoint.safetensors", *sorted((Path(run_dir) / "report").glob("*.png"))]
        return {str(path): path.stat().st_mtime_ns for path in files}

    before = {run["run_dir"]: written(run["run_dir"]) for run in result["runs"]}
    assert all(len(files) > 1 for files in before.values())  # pictures were drawn the first time
    assert main(["ablate", "--out", str(out), "--glimpses", "1", "--seeds", "3", "--epochs", "1", "--images", "20",
                 "--hidden", "16", "--feature-dim", "16"]) == 0
    assert {run_dir: written(run_dir) for run_dir in before} == before  # nothing trained or drawn again


@pytest.mark.parametrize(("arguments", "message"), [
    (["--seeds", "1", "1"], "--seeds lists a value twice: 1 1"),
    (["--glimpses", "4", "1", "4"], "--glimpses lists a value twice"),
    (["--glimpses", "0"], "argument --glimpses: must be positive, not 0"),
    (["--data-seed", "-1"], "argument --data-seed: must be zero or more, not -1"),
])
def test_bad_ablation_arguments_are_refused_before_anything_runs(tmp_path: Path, capsys, arguments, message):
    try:
        status = main(["ablate", "--out", str(tmp_path / "out"), *arguments])
    except SystemExit as usage_error:  # argparse's own
        status = usage_error.code
    assert status == 2 and message in capsys.readouterr().err and not (tmp_path / "out").exists()

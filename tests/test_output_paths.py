"""Where `ban` writes: a file is never written over a directory (nor a directory over a file), missing parent
directories are created, and an output path that cannot be used is a clear error that touches nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import make_dataset
from test_cli_train import SMALL
from test_flickr30k import write_raw

from ban.cli import main
from ban.data.atomic import atomic_path, write_json
from ban.errors import DataError


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A prepared VQA dataset and a run trained on it for one epoch."""
    root = tmp_path_factory.mktemp("trained")
    data_dir = make_dataset(root, seed=3)
    assert main(["train", "--data", str(data_dir), "--out", str(root / "run"), "--epochs", "1", *SMALL]) == 0
    return data_dir, root / "run"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_file_is_never_written_over_a_directory(tmp_path):
    folder = tmp_path / "folder"
    (folder / "inside").mkdir(parents=True)
    (folder / "inside" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is a directory") as caught:
        write_json(folder, {"a": 1})
    assert caught.value.path == str(folder)
    assert snapshot(folder) == {"inside/notes.txt": b"mine"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder"]  # no temporaries left


def test_a_directory_is_never_put_where_a_file_is(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(DataError, match="exists and is not a directory"), atomic_path(tmp_path / "file") as temp:
        temp.mkdir()
    assert (tmp_path / "file").read_text() == "mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


def test_missing_parent_directories_are_created(tmp_path):
    write_json(tmp_path / "a" / "b" / "c.json", [1])
    assert json.loads((tmp_path / "a" / "b" / "c.json").read_text()) == [1]


def test_predict_refuses_a_directory_as_out_or_logits(trained, tmp_path, capsys):
    data_dir, run_dir = trained
    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    before = snapshot(run_copy)
    assert main(["predict", str(run_copy), "--split", "val", "--out", str(run_copy)]) == 2
    assert f"{run_copy}: is a directory" in capsys.readouterr().err
    assert snapshot(run_copy) == before
    data_before = snapshot(data_dir)
    results = tmp_path / "results.json"
    assert main(["predict", str(run_dir), "--split", "val", "--out", str(results), "--logits", str(data_dir)]) == 2
    assert f"{data_dir}: is a directory" in capsys.readouterr().err
    assert snapshot(data_dir) == data_before and not results.exists()


def test_predict_refuses_one_file_for_results_and_logits(trained, tmp_path, capsys):
    same = tmp_path / "same.json"
    assert main(["predict", str(trained[1]), "--split", "val", "--out", str(same), "--logits", str(same)]) == 2
    assert "--out and --logits name the same file" in capsys.readouterr().err and not same.exists()


def test_predict_creates_the_missing_parents_of_out(trained, tmp_path):
    results = tmp_path / "nodir" / "x" / "y.json"
    assert main(["predict", str(trained[1]), "--split", "val", "--out", str(results)]) == 0
    questions = json.loads((trained[0] / "val_questions.json").read_text())["questions"]
    assert sorted(r["question_id"] for r in json.loads(results.read_text())) == sorted(
        q["question_id"] for q in questions)


@pytest.mark.parametrize("command", ["synth", "prepare vqa2", "prepare flickr30k", "train", "visualize", "predict"])
@pytest.mark.parametrize("where", ["file", "parent"])
def test_an_out_blocked_by_a_file_is_a_clear_error(trained, tmp_path, capsys, command, where):
    data_dir, run_dir = trained
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    out = str(blocker if where == "file" else blocker / "sub")
    raw_vqa = data_dir.parent / "raw"
    arguments = {
        "synth": ["synth", "--out", out, "--images", "10", "--feature-dim", "8", "--flickr-images", "0",
                  "--no-png", "--quiet"],
        "prepare vqa2": ["prepare", "vqa2", "--root", str(raw_vqa / "vqa"), "--features",
                         *map(str, sorted((raw_vqa / "features").glob("*.tsv"))), "--out", out, "--json"],
        "prepare flickr30k": ["prepare", "flickr30k", "--root", str(tmp_path / "raw"), "--features",
                              *map(str, write_raw(tmp_path / "raw")), "--out", out, "--json"],
        "train": ["train", "--data", str(data_dir), "--out", out, "--epochs", "1", *SMALL],
        "visualize": ["visualize", str(run_dir), "--split", "val", "--num", "1", "--out", out],
        "predict": ["predict", str(run_dir), "--split", "val", "--out", str(Path(out) / "results.json")],
    }[command]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert f"{blocker}: " in error and "exists and is not a directory" in error
    assert blocker.read_text() == "mine"

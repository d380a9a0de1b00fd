"""`ban train` refuses what it can before it builds or trains anything: a misspelt or bad setting and a taken --out
before the synthetic scenes are made (a minute or more), a damaged val split before the first epoch, a split listed
twice in train_splits; and `--epochs 0` says that nothing was trained."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset

from ban.cli import main
from ban.engine.run import CHECKPOINT_FILE

SMALL = ["--preset", "tiny", "--set", "model.hidden_dim=16", "--set", "model.word_dim=8", "--set", "batch_size=64"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synthetic"), seed=6)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--set", "lrr=1"], "unknown training setting 'lrr'"),
    (["--set", "lr=fast"], "setting 'lr': 'fast' is not a valid float"),
    (["--set", "model.num_glimpses=many"], "setting 'num_glimpses': 'many' is not a valid int"),
    (["--set", "train_splits=train,train"], "training setting 'train_splits' lists train more than once"),
    (["--epochs", "1", "--set", "epochs=abc"], "--epochs 1 and --set epochs=abc both given: give one"),
])
def test_a_bad_setting_is_refused_before_the_synthetic_scenes_are_made(tmp_path, monkeypatch, capsys, arguments,
                                                                       message):
    monkeypatch.setenv("BAN_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--out", str(tmp_path / "run"), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_a_taken_out_folder_is_refused_before_the_synthetic_scenes_are_made(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BAN_CACHE", str(tmp_path / "cache"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["train", "--out", str(taken)]) == 2
    assert "holds other files and no run" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_a_damaged_val_split_is_refused_before_the_first_epoch(data_dir, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(data_dir, damaged)
    with np.load(damaged / "val.npz") as split:
        arrays = dict(split)
    arrays["image_id"][0] = 999999
    np.savez(damaged / "val.npz", **arrays)
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(damaged), "--out", str(run_dir), "--epochs", "1", *SMALL]) == 2
    err = capsys.readouterr().err
    assert f"{damaged / 'val.npz'}: record question_id={arrays['question_id'][0]}: field 'image_id'" in err
    assert "epoch 1" not in err and not run_dir.exists()  # no epoch trained, the new run taken back


def test_zero_epochs_says_nothing_was_trained(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "0", *SMALL]) == 0
    assert capsys.readouterr().out.strip() == (
        f"nothing trained (epochs=0): {run_dir} holds the run's settings only; train it with: ban train --out "
        f"{run_dir} --resume --epochs N")
    assert not (run_dir / CHECKPOINT_FILE).exists()

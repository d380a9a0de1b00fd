"""What can make a training run's validation fail, and what is kept when it does: annotations that cannot be read,
or a grounding val split with nothing to score, are refused before the first epoch; annotations that do not match
the val split (found only when scoring) checkpoint the finished epoch before the error; weights gone non-finite in
a new run's first epoch take the new run back, so the corrected command can use the same --out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RUN, make_dataset

from ban.cli import main
from ban.engine.checkpoint import Checkpoint
from ban.engine.run import CHECKPOINT_FILE


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("clean"), seed=7)


@pytest.fixture()
def damaged(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "damaged"))


def test_unreadable_val_annotations_are_refused_before_the_first_epoch(damaged, tmp_path, capsys):
    path = damaged / "val_annotations.json"
    path.write_bytes(path.read_bytes()[:300])
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(damaged), "--out", str(run_dir), "--epochs", "1", *TINY_RUN]) == 2
    err = capsys.readouterr().err
    assert f"{path}: not valid JSON" in err and "epoch 1:" not in err
    assert not run_dir.exists()  # nothing trained; the new run taken back


def drop_an_annotation(data_dir: Path) -> tuple[Path, int]:
    """Take the last question's annotation out of val_annotations.json: (the file, that question's id)."""
    path = data_dir / "val_annotations.json"
    annotations = json.loads(path.read_text())
    dropped = annotations["annotations"].pop()["question_id"]
    path.write_text(json.dumps(annotations))
    return path, dropped


def test_annotations_missing_a_val_question_checkpoint_the_epoch_before_the_error(damaged, tmp_path, capsys):
    path, dropped = drop_an_annotation(damaged)
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(damaged), "--out", str(run_dir), "--epochs", "1", *TINY_RUN]) == 2
    err = capsys.readouterr().err
    assert f"{path}: record {dropped}: field 'question_id': question is not in the annotations" in err
    assert f"Epoch 1 is checkpointed without its validation; once the data is mended, continue with: ban train " \
           f"--out {run_dir} --resume" in err
    state = Checkpoint(run_dir / CHECKPOINT_FILE).state
    assert (state["epoch"], state["step"], state["history"]) == (0, 4, [])  # the epoch's 4 steps kept


@pytest.mark.slow
def test_under_torchrun_the_error_is_said_once_after_every_process_checkpointed(damaged, tmp_path):
    path, dropped = drop_an_annotation(damaged)
    run_dir = tmp_path / "run"
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ban.cli",
         "train", "--data", str(damaged), "--out", str(run_dir), "--epochs", "1", *TINY_RUN],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert launched.returncode != 0
    assert launched.stderr.count(f"{path}: record {dropped}: field 'question_id': question is not in the "
                                 "annotations") == 1, launched.stderr[-3000:]
    assert f"continue with: torchrun --nproc_per_node 2 -m ban.cli train --out {run_dir} --resume" in launched.stderr
    state = Checkpoint(run_dir / CHECKPOINT_FILE).state
    assert (state["epoch"], state["step"], state["history"]) == (0, 4, [])


def test_a_grounding_val_split_with_nothing_to_score_is_refused_before_the_first_epoch(tmp_path, capsys):
    from ban.data.flickr30k_prepare import prepare_flickr30k
    from ban.data.synthetic import generate

    generate(tmp_path / "raw", seed=1, num_images=10, feature_dim=16, flickr_images=40, write_images=False,
             workers=1, progress=False)
    flickr, prepared = tmp_path / "raw" / "flickr30k", tmp_path / "prepared"
    prepare_flickr30k(flickr, [flickr / "features.tsv"], prepared, progress=False)
    with np.load(prepared / "val.npz") as split:
        arrays = dict(split)
    arrays["has_ground_truth"][:] = False
    np.savez(prepared / "val.npz", **arrays)
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(prepared), "--out", str(run_dir), "--epochs", "1", "--preset",
                 "tiny-grounding"]) == 2
    err = capsys.readouterr().err
    assert f"{prepared / 'val.npz'}: field 'has_ground_truth': split 'val' has no entity with a ground-truth box" \
           in err and "epoch 1:" not in err
    assert not run_dir.exists()


def test_weights_gone_non_finite_take_a_new_run_back(clean, tmp_path, capsys):
    run_dir = tmp_path / "run"
    overflowing = ["--set", "lr=1e308", "--set", "batch_size=1024"]  # one step an epoch: the weights overflow first
    assert main(["train", "--data", str(clean), "--out", str(run_dir), "--epochs", "1", *TINY_RUN, *overflowing]) == 2
    assert "the weights became non-finite in epoch 1; no checkpoint was written" in capsys.readouterr().err
    assert not run_dir.exists()
    assert main(["train", "--data", str(clean), "--out", str(run_dir), "--epochs", "1", *TINY_RUN]) == 0  # same --out

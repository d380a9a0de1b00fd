"""Divergence: a non-finite loss stops the run naming the epoch and step — and the sample and field when the batch's
inputs hold the NaN, else the batch and a lower learning rate — and never overwrites the last good checkpoint; with
``skip_nonfinite`` such batches are skipped and counted instead.

The NaN mostly comes from the data, as it would in practice: one image's region features in the prepared store are
overwritten with NaN, so every batch holding one of its questions has a NaN loss.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import poison
from test_engine_trainer import make_dataset, small_run

from ban.cli import main
from ban.engine.checkpoint import Checkpoint
from ban.engine.run import BEST_FILE, CHECKPOINT_FILE, start_run
from ban.engine.tasks import VQATask
from ban.engine.trainer import DivergedOnData, TrainingDiverged, non_finite_row, train
from ban.errors import BanError

BATCH = 16  # about 14 batches an epoch: the poisoned image's few questions leave most of them clean


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("clean"), seed=5)


def poisoned_batches(data_dir: Path, image_id: int, seed: int, epoch: int) -> list[tuple[int, int]]:
    """(1-based step, batch size) of each batch of ``epoch`` that holds a question on ``image_id``. The epoch's
    order is the documented one: ``torch.randperm(questions)`` seeded with seed + epoch, cut into batches."""
    image_ids = np.load(data_dir / "train.npz")["image_id"]
    on_image = set(np.flatnonzero(image_ids == image_id).tolist())
    order = torch.randperm(len(image_ids), generator=torch.Generator().manual_seed(seed + epoch))
    return [(index + 1, len(batch)) for index, batch in enumerate(order.split(BATCH)) if on_image & set(batch.tolist())]


@pytest.fixture()
def poisoned(clean_data, tmp_path) -> tuple[Path, int]:
    data_dir = tmp_path / "poisoned"
    shutil.copytree(clean_data, data_dir)
    return data_dir, poison(data_dir, question=100)


def test_a_nan_loss_from_the_data_stops_the_run_naming_epoch_step_and_sample(poisoned, tmp_path, capsys):
    data_dir, image_id = poisoned
    run_dir = tmp_path / "run"
    code = main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "1", "--preset", "tiny",
                 "--set", "model.hidden_dim=16", "--set", "model.word_dim=8", "--set", f"batch_size={BATCH}",
                 "--set", "precision=fp32"])
    message = capsys.readouterr().err
    assert code != 0
    step = poisoned_batches(data_dir, image_id, seed=1204, epoch=0)[0][0]
    assert re.search(rf"non-finite loss at epoch 1, step {step}\b", message), message
    assert "skip_nonfinite" in message  # says how to skip such batches
    # bad data, not a learning rate: the dataset, a question on the poisoned image and the field are named
    named = re.search(rf"{re.escape(str(data_dir))}: record question_id=(\d+): field 'features': ", message)
    assert named, message
    questions = np.load(data_dir / "train.npz")
    assert int(named.group(1)) in questions["question_id"][questions["image_id"] == image_id].tolist()
    assert not (run_dir / CHECKPOINT_FILE).exists()  # nothing good to keep yet, and nothing bad written
    assert (run_dir / "config.json").exists()  # kept: the message's resume command works


def test_a_divergence_on_finite_inputs_names_the_batch_and_advises_a_lower_learning_rate(clean_data, tmp_path,
                                                                                         monkeypatch):
    """The inputs are sound (an infinite loss, as an exploding model gives): the batch is named, not a sample."""
    finite_loss = VQATask.loss_sum
    monkeypatch.setattr(VQATask, "loss_sum", lambda task, logits, batch: finite_loss(task, logits, batch) * math.inf)
    run = small_run(clean_data, epochs=1, precision="fp32", batch_size=BATCH)
    run_dir = tmp_path / "run"
    start_run(run_dir, run, resume=False)
    with pytest.raises(TrainingDiverged) as caught:
        train(run_dir, run, VQATask(clean_data))
    assert not isinstance(caught.value, DivergedOnData)
    assert re.match(r"non-finite loss at epoch 1, step 1 \(batch 1 of \d+ in the epoch's order; its question ids "
                    r"begin \[[\d, ]+\]\); nothing was updated .*Lower the learning rate", str(caught.value))


def test_the_input_a_nan_is_found_in_is_named_as_the_store_names_it():
    batch = {"features": torch.ones(3, 4, 5), "boxes": torch.ones(3, 4, 6)}
    assert non_finite_row(batch) is None
    batch["boxes"][2, 1, 0] = math.inf
    assert non_finite_row(batch) == (2, "spatial")
    batch["features"][1, 3, 4] = math.nan
    assert non_finite_row(batch) == (1, "features")


@pytest.mark.slow
def test_under_torchrun_no_process_blames_the_learning_rate_for_bad_data(poisoned, tmp_path):
    """Two processes: the one whose half of the batch holds the poisoned image names its sample; the other, which
    met only the shared non-finite loss, says another process's part holds bad inputs — neither advises a lower
    learning rate (each process decided alone before, so one did)."""
    data_dir, _ = poisoned
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ban.cli",
         "train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--epochs", "1", "--preset", "tiny",
         "--set", "model.hidden_dim=16", "--set", "model.word_dim=8", "--set", f"batch_size={BATCH}",
         "--set", "precision=fp32", "--set", "device=cpu"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert launched.returncode != 0
    assert re.search(rf"{re.escape(str(data_dir))}: record question_id=\d+: field 'features': non-finite loss",
                     launched.stderr), launched.stderr[-3000:]
    assert "Lower the learning rate" not in launched.stderr


def test_a_nan_never_overwrites_the_last_good_checkpoint(clean_data, poisoned, tmp_path):
    data_dir, _ = poisoned
    run = small_run(data_dir, epochs=2, precision="fp32", batch_size=BATCH)
    run_dir = tmp_path / "run"
    clean_run = small_run(clean_data, epochs=1, precision="fp32", batch_size=BATCH)
    start_run(run_dir, clean_run, resume=False)
    train(run_dir, clean_run, VQATask(clean_data))  # epoch 1 on clean data: a good checkpoint
    good = (run_dir / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(BanError, match="non-finite loss at epoch 2"):
        train(run_dir, run, VQATask(data_dir), resume=True)
    assert (run_dir / CHECKPOINT_FILE).read_bytes() == good


def test_weights_overflowing_in_an_epochs_last_step_never_reach_best_nor_the_checkpoint(clean_data, tmp_path):
    """An update with a finite loss and gradient can still overflow the weights (here a learning rate of 1e308, one
    step per epoch, so no later loss turns NaN first): the run stops before its validation may write them as
    best.safetensors, and says whether a checkpoint is kept and in which epoch it happened."""
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    diverging = small_run(clean_data, epochs=2, precision="fp32", batch_size=1024, lr=1e308)
    start_run(fresh, diverging, resume=False)
    with pytest.raises(BanError, match=r"^the weights became non-finite in epoch 1; no checkpoint was written\."):
        train(fresh, diverging, VQATask(clean_data))
    assert not (fresh / BEST_FILE).exists() and not (fresh / CHECKPOINT_FILE).exists()

    good_run = small_run(clean_data, epochs=1, precision="fp32", batch_size=1024)
    start_run(resumed, good_run, resume=False)
    train(resumed, good_run, VQATask(clean_data))  # epoch 1: validated, a good best.safetensors and checkpoint
    best, checkpoint = (resumed / BEST_FILE).read_bytes(), (resumed / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(BanError, match=r"^the weights became non-finite in epoch 2; the last checkpoint is unchanged"):
        train(resumed, diverging, VQATask(clean_data), resume=True)
    assert (resumed / BEST_FILE).read_bytes() == best and (resumed / CHECKPOINT_FILE).read_bytes() == checkpoint


def test_skipping_non_finite_batches_counts_them(poisoned, tmp_path):
    data_dir, image_id = poisoned
    run = small_run(data_dir, epochs=2, precision="fp32", batch_size=BATCH, skip_nonfinite=True)
    run_dir = tmp_path / "run"
    start_run(run_dir, run, resume=False)
    history = train(run_dir, run, VQATask(data_dir))
    for epoch, record in enumerate(history):
        hit = poisoned_batches(data_dir, image_id, run.train.seed, epoch)
        assert record["skipped_batches"] == len(hit) >= 1
        questions = len(np.load(data_dir / "train.npz")["question_id"])
        assert record["samples"] == questions - sum(size for _, size in hit)
        assert np.isfinite(record["train_loss"])
    weights = Checkpoint(run_dir / CHECKPOINT_FILE).model
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["skipped_batches"] for line in lines] == [r["skipped_batches"] for r in history]


def test_a_nan_count_gives_a_nan_row_instead_of_an_index_error():
    from ban.nn.counting import soft_one_hot

    rows = soft_one_hot(torch.tensor([float("nan"), 1.5]), 4)
    assert torch.isnan(rows[0]).all()
    assert rows[1].tolist() == [0.0, 0.5, 0.5, 0.0]

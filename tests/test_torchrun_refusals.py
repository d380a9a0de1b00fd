"""What the main process alone checks or writes under `torchrun` — the run dir's config on starting or resuming, the
reports after an epoch — and fails at: every process stops at once, the error said once.

Before, the other processes were left waiting: in the process group's set-up, which the main process never joined
(torchrun then killed them after its 30 s grace: "forcefully exiting via 9"; another launcher would wait for the
group's timeout), or in their next collective ("Connection closed by peer" from each, with a traceback).
Every run here is a real `torchrun --nproc_per_node 2` (gloo).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_run

from ban.engine.checkpoint import Checkpoint
from ban.engine.distributed import ShardedBatches
from ban.engine.reporting import CURVES_FILE
from ban.engine.run import CHECKPOINT_FILE, CONFIG_FILE


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run of the tiny model, trained one epoch by one process."""
    return tiny_run(tmp_path_factory.mktemp("torchrun_refusals"), seed=5)


def torchrun_train(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "ban.cli", "train", *arguments], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)


def assert_said_once_by_all(launched: subprocess.CompletedProcess, message: str) -> None:
    """Both processes stopped with ``message``, said once, neither left waiting nor broken off."""
    assert launched.returncode != 0
    assert launched.stderr.count("ban train: error: ") == 1 and message in launched.stderr, launched.stderr[-3000:]
    assert "forcefully exiting" not in launched.stderr, launched.stderr[-3000:]
    assert "Connection closed" not in launched.stderr and "[rank1]" not in launched.stderr, launched.stderr[-3000:]


@pytest.mark.slow
def test_a_new_run_into_a_taken_run_dir(run_dir, tmp_path):
    before = (run_dir / CONFIG_FILE).read_bytes()
    launched = torchrun_train("--data", str(run_dir.parent / "prepared"), "--out", str(run_dir), "--preset", "tiny")
    assert_said_once_by_all(launched, f"{run_dir} already holds a run")
    assert (run_dir / CONFIG_FILE).read_bytes() == before


@pytest.mark.slow
def test_a_resume_with_another_configuration(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    launched = torchrun_train("--out", str(copy), "--resume", "--set", "lr=0.5")
    assert_said_once_by_all(launched, f"cannot resume {copy} with a different configuration: train.lr differs")


@pytest.mark.slow
def test_an_epochs_report_that_cannot_be_written(run_dir, tmp_path):
    """The learning curves' file is a folder: the main process cannot write it after epoch 2's checkpoint."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / CURVES_FILE).unlink()
    (copy / CURVES_FILE / "inside").mkdir(parents=True)
    launched = torchrun_train("--out", str(copy), "--resume", "--epochs", "2")
    assert_said_once_by_all(launched, f"{copy / CURVES_FILE}: ")
    assert (f"; the checkpoint after epoch 2 is saved. Mend that, then continue with: torchrun --nproc_per_node 2 -m "
            f"ban.cli train --out {copy} --resume") in launched.stderr
    assert Checkpoint(copy / CHECKPOINT_FILE).state["epoch"] == 2
    shutil.rmtree(copy / CURVES_FILE)  # mended: the resume the message gives draws them
    resumed = torchrun_train("--out", str(copy), "--resume")
    assert resumed.returncode == 0 and (copy / CURVES_FILE).is_file(), resumed.stderr[-3000:]


@pytest.mark.slow
def test_a_divergence_is_said_once_naming_the_whole_batch(run_dir, tmp_path):
    """An absurd learning rate: each process used to say so, naming its own half of the batch as "the batch"."""
    launched = torchrun_train("--data", str(run_dir.parent / "prepared"), "--out", str(tmp_path / "run"),
                              "--preset", "tiny", "--set", "lr=1e30", "--set", "batch_size=16")
    assert_said_once_by_all(launched, "Lower the learning rate")
    found = re.search(r"non-finite (loss|gradient) at epoch 1, step (\d+) .*its question ids begin \[([\d, ]+)\]",
                      launched.stderr)
    assert found, launched.stderr[-3000:]
    epoch = ShardedBatches(num_samples=len(np.load(run_dir.parent / "prepared" / "train.npz")["question_id"]),
                           batch_size=16, seed=1204, epoch=0)
    batch = list(epoch)[int(found[2]) - 1]
    question_ids = np.load(run_dir.parent / "prepared" / "train.npz")["question_id"]
    assert [int(i) for i in found[3].split(", ")] == question_ids[batch[:5]].tolist()  # the global batch's first


# `ban` with the free memory of the process of rank 1 (only) said to be 1000 bytes
SHORT_OF_MEMORY_IN_RANK_1 = """
import os, sys
import ban.data.resident as resident
if os.environ["RANK"] == "1":
    resident.free_memory = lambda device: 1000
from ban.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_an_error_one_process_alone_meets_is_still_said(run_dir, tmp_path):
    """The memory check of `resident=true` is each process's own: when only one process is short of memory, that
    one says so (an error every process meets alike is said by the main process alone)."""
    launcher = tmp_path / "short_of_memory.py"
    launcher.write_text(SHORT_OF_MEMORY_IN_RANK_1)
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher), "train",
         "--data", str(run_dir.parent / "prepared"), "--out", str(tmp_path / "run"), "--preset", "tiny",
         "--set", "resident=true"], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300)
    assert launched.returncode != 0
    assert "ban train: error: resident data needs" in launched.stderr, launched.stderr[-3000:]

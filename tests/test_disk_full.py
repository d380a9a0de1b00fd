"""A write that finds no room (a full disk or quota, a file-size limit) in `ban prepare`, `ban synth` and `ban train`:
one line naming the file or directory that could not be written, exit status 2, the earlier output kept as it was.

The failing writes are real: each command runs in a process whose file-size limit (RLIMIT_FSIZE) is below the size
of a file it writes, so the write fails with EFBIG ("File too large"), as one on a full disk fails with ENOSPC.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RUN, make_dataset

from ban.cli import main
from ban.engine.run import CHECKPOINT_FILE

SYNTH = ["--images", "24", "--feature-dim", "16", "--flickr-images", "0", "--no-png", "--quiet"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared VQA dataset (:func:`conftest.make_dataset`); the `ban synth` output it was made from beside it."""
    return make_dataset(tmp_path_factory.mktemp("disk_full"), seed=0)


@pytest.fixture(scope="module")
def raw(prepared) -> Path:
    """`ban synth` output: raw/vqa, raw/features/*.tsv."""
    return prepared.parent / "raw"


@pytest.fixture(scope="module")
def run_dir(prepared) -> Path:
    """A run of the tiny model trained one epoch (its checkpoint: the model's weights and Adamax's state)."""
    out = prepared.parent / "run"
    assert main(["train", "--data", str(prepared), "--out", str(out), "--epochs", "1", *TINY_RUN]) == 0
    return out


def ban_with_file_size_limit(limit: int, *argv: str) -> subprocess.CompletedProcess:
    """``ban ARGV`` in a process that cannot write a file past ``limit`` bytes (Python ignores SIGXFSZ: such a
    write fails with EFBIG)."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "ban.cli", *argv], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, preexec_fn=limit_file_size, timeout=120)


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) by its relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def hidden(folder: Path) -> list[str]:
    """The hidden entries (an atomic write's temporaries: ``.NAME.tmp-PID``) in ``folder``."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def assert_one_line_error(failed: subprocess.CompletedProcess, line: str) -> None:
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert failed.stderr.rstrip("\n").rpartition("\n")[2].rpartition("\r")[2] == line, failed.stderr[-3000:]


def test_prepare_that_cannot_write_its_dataset_keeps_the_earlier_one(raw, prepared, tmp_path):
    out = tmp_path / "prepared"
    shutil.copytree(prepared, out)
    earlier = contents(out)
    failed = ban_with_file_size_limit(
        8192, "prepare", "vqa2", "--root", str(raw / "vqa"), "--features",
        *map(str, sorted((raw / "features").glob("*.tsv"))), "--out", str(out), "--min-answer-count", "1")
    assert_one_line_error(failed, f"ban prepare: error: {out}: cannot be written: File too large")
    assert contents(out) == earlier
    assert hidden(tmp_path) == [] and hidden(out) == []


def test_prepare_of_a_new_dataset_that_cannot_be_written_leaves_nothing(raw, tmp_path):
    out = tmp_path / "new" / "prepared"
    failed = ban_with_file_size_limit(
        8192, "prepare", "vqa2", "--root", str(raw / "vqa"), "--features",
        *map(str, sorted((raw / "features").glob("*.tsv"))), "--out", str(out), "--min-answer-count", "1")
    assert_one_line_error(failed, f"ban prepare: error: {out}: cannot be written: File too large")
    assert not out.exists() and hidden(out.parent) == []


def test_synth_that_cannot_write_its_output_keeps_the_earlier_one(raw, tmp_path):
    out = tmp_path / "synth"
    shutil.copytree(raw, out)
    earlier = contents(out)
    failed = ban_with_file_size_limit(8192, "synth", "--out", str(out), "--seed", "1", *SYNTH)
    assert_one_line_error(failed, f"ban synth: error: {out}: cannot be written: File too large")
    assert contents(out) == earlier
    assert hidden(tmp_path) == [] and hidden(out) == []


def test_synth_workers_that_cannot_write_their_files_name_the_output(tmp_path):
    """The scenes' pictures are written by the worker processes, inside the hidden directory being built: the error
    names ``--out``, not a file in that directory."""
    out = tmp_path / "synth"
    failed = ban_with_file_size_limit(100, "synth", "--out", str(out), "--images", "10", "--flickr-images", "0",
                                      "--feature-dim", "4", "--workers", "2", "--quiet")
    assert_one_line_error(failed, f"ban synth: error: {out}: cannot be written: File too large")
    assert not out.exists() and hidden(tmp_path) == []


def test_train_whose_checkpoint_cannot_be_written_keeps_the_previous_one_and_says_how_to_go_on(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    checkpoint = run / CHECKPOINT_FILE
    earlier = checkpoint.read_bytes()
    # room for every other file of the epoch (best.safetensors: the weights alone), not for its checkpoint
    failed = ban_with_file_size_limit(len(earlier), "train", "--out", str(run), "--resume", "--epochs", "2")
    assert_one_line_error(
        failed, f"ban train: error: {checkpoint}: cannot be written: File too large; the checkpoint after epoch 2 was "
                f"not saved, the previous checkpoint (after epoch 1) is kept. Make room, then continue with: ban train "
                f"--out {run} --resume")
    assert checkpoint.read_bytes() == earlier
    assert hidden(run) == []


def test_train_whose_first_checkpoint_cannot_be_written_says_to_run_it_again(prepared, tmp_path):
    run = tmp_path / "run"
    failed = ban_with_file_size_limit(40_000, "train", "--data", str(prepared), "--out", str(run), "--epochs", "1",
                                      *TINY_RUN)
    assert_one_line_error(
        failed, f"ban train: error: {run / CHECKPOINT_FILE}: cannot be written: File too large; the checkpoint after "
                f"epoch 1 was not saved, and there is no earlier one. Make room, then run the same command again")
    assert not run.exists() and hidden(tmp_path) == []  # the new run is abandoned: the same --out can start it again


def test_saving_in_the_authors_format_without_room_names_the_file_and_keeps_the_earlier_one(tmp_path):
    """``ban.save_official_checkpoint`` (``torch.save``, whose own error for a failed write is a RuntimeError
    with C++ positions in it) raises the DataError every other write raises."""
    path = tmp_path / "model_epoch12.pth"
    script = ("import sys, ban\n"
              "config = ban.BANConfig(num_tokens=10, num_answers=3, hidden_dim=8, feature_dim=8, num_glimpses=1,"
              " word_dim=4)\n"
              "ban.save_official_checkpoint(ban.build_model(config), sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=120)
    size = path.stat().st_size
    path.write_bytes(b"earlier")
    # the limit in the header (pickled through Python) and in the tensors' bytes (written from C++ but for ban)
    for limit in (2048, size // 2):
        failed = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                                timeout=120, preexec_fn=lambda limit=limit: resource.setrlimit(
                                    resource.RLIMIT_FSIZE, (limit, limit)))
        assert failed.returncode == 1
        assert failed.stderr.rstrip("\n").rpartition("\n")[2] == (
            f"ban.errors.DataError: {path}: cannot be written: File too large"), failed.stderr[-3000:]
        assert path.read_bytes() == b"earlier" and hidden(tmp_path) == []

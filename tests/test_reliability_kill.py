"""`kill -9` / SIGTERM during `ban train` at several points, then `--resume`: nothing is lost.

Every run is a real `ban train` subprocess. Kill points inside the checkpoint write are reached by a small
launcher (``KILLER`` below) that wraps the write primitives and sends a real signal to its own process at the
chosen moment; the other kills come from this test process. After each kill the invariant is checked: the
run dir's checkpoint (if any) loads, nothing half-written carries a final name, and `--resume` continues. The
chain ends with weights, optimizer and RNG states and metrics.jsonl equal (bit for bit, timings aside) to an
uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_engine_trainer import make_dataset

from ban.engine.checkpoint import Checkpoint
from ban.engine.run import BEST_FILE, CHECKPOINT_FILE

EPOCHS = 3  # 216 training questions, batch 64: 4 steps an epoch
TRAIN = ["--epochs", str(EPOCHS), "--preset", "tiny", "--set", "model.hidden_dim=16", "--set", "model.word_dim=8",
         "--set", "batch_size=64", "--set", "precision=fp32"]
TIMINGS = ("seconds", "samples_per_s")

# Runs `ban` after arranging a signal to itself, chosen by $KILL_AT:
#   save:<name>:<n>          – the n-th write of checkpoint <name> stops half-way (temp file cut in half), SIGKILL
#   replace:<name>:<n>:before|after – SIGKILL just before / after the n-th atomic rename onto <name>
#   step:<n>:<SIGNAL>        – send SIGNAL when the n-th optimisation step measures its gradient norm
#   batch:<n>:<SIGNAL>       – a data-loader worker sends SIGNAL to the whole process group (itself and the
#                              training process too, as torchrun and schedulers signal) as it reads its n-th batch
KILLER = r"""
import os, signal, sys
from pathlib import Path
kind, *spec = os.environ["KILL_AT"].split(":")
calls = [0]
def hit(n):
    calls[0] += 1
    return calls[0] == int(n)
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if kind == "save":
    import ban.engine.checkpoint as checkpoint
    write = checkpoint.save_file
    def save_file(tensors, path, metadata=None):
        write(tensors, path, metadata=metadata)
        if spec[0] in Path(path).name and hit(spec[1]):
            os.truncate(path, os.path.getsize(path) // 2)
            die()
    checkpoint.save_file = save_file
elif kind == "replace":
    name, n, when = spec
    rename = os.replace
    def replace(source, target):
        if Path(target).name == name and hit(n):
            if when == "before":
                die()
            rename(source, target)
            die()
        rename(source, target)
    os.replace = replace
elif kind == "step":
    import torch.nn.utils
    norm = torch.nn.utils.get_total_norm
    def norm_and_signal(*args, **kwargs):
        if hit(spec[0]):
            os.kill(os.getpid(), getattr(signal, spec[1]))
        return norm(*args, **kwargs)
    torch.nn.utils.get_total_norm = norm_and_signal
elif kind == "batch":
    import ban.data.loader as loader
    read = loader._ErrorsAsBatches.__getitems__
    def read_and_signal(self, indices):
        if hit(spec[0]):
            os.killpg(os.getpgrp(), getattr(signal, spec[1]))
        return read(self, indices)
    loader._ErrorsAsBatches.__getitems__ = read_and_signal
from ban.cli import main
sys.exit(main(sys.argv[1:]))
"""


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def ban_train(arguments: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    """`ban ARGUMENTS` in a process group of its own (its loader workers are in it too)."""
    command = [sys.executable, "-c", KILLER, *arguments] if kill_at else [sys.executable, "-m", "ban.cli", *arguments]
    return subprocess.run(command, env=environment(**({"KILL_AT": kill_at} if kill_at else {})),
                          capture_output=True, text=True, timeout=300, start_new_session=True)


def resume(run_dir: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return ban_train(["train", "--out", str(run_dir), "--resume"], kill_at)


def assert_intact(run_dir: Path) -> Checkpoint | None:
    """The invariant after any kill: the checkpoint, metrics.jsonl and config.json, when present, are whole."""
    json.loads((run_dir / "config.json").read_text())
    for line in (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []:
        json.loads(line)
    if not (run_dir / CHECKPOINT_FILE).exists():
        return None
    checkpoint = Checkpoint(run_dir / CHECKPOINT_FILE)
    assert set(checkpoint.state) >= {"epoch", "step", "history"}
    assert len(checkpoint.state["history"]) == checkpoint.state["epoch"]
    return checkpoint


def position(run_dir: Path) -> tuple[int, int]:
    state = Checkpoint(run_dir / CHECKPOINT_FILE).state
    return state["epoch"], state["step"]


def killed(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == -signal.SIGKILL


def metrics(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k not in TIMINGS} for record in records]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("kill"), seed=4)


@pytest.mark.slow
def test_killed_and_resumed_run_ends_exactly_like_an_uninterrupted_one(data_dir, tmp_path):
    straight, chain = tmp_path / "straight", tmp_path / "chain"
    reference = subprocess.Popen([sys.executable, "-m", "ban.cli", "train", "--data", str(data_dir), "--out",
                                  str(straight), *TRAIN], env=environment(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)

    # 1. SIGKILL half-way through writing the first checkpoint: no checkpoint yet, --resume starts over
    result = ban_train(["train", "--data", str(data_dir), "--out", str(chain), *TRAIN],
                       kill_at=f"save:{CHECKPOINT_FILE}:1")
    assert killed(result), result.stderr[-2000:]
    assert assert_intact(chain) is None
    assert [p.name for p in chain.iterdir() if p.name.startswith(".checkpoint")]  # the cut temp file, hidden

    # 2. SIGKILL from outside as soon as a checkpoint file exists (somewhere in epoch 2 or its reporting)
    process = subprocess.Popen([sys.executable, "-m", "ban.cli", "train", "--out", str(chain), "--resume"],
                               env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (chain / CHECKPOINT_FILE).exists() and process.poll() is None:
        time.sleep(0.002)
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert assert_intact(chain).state["epoch"] >= 1

    # 3. SIGTERM in the middle of an epoch: the step finishes, a checkpoint is written, exit code and message
    epoch, _ = position(chain)
    result = resume(chain, kill_at="step:2:SIGTERM")
    assert result.returncode == 130, result.stderr[-2000:]
    assert "ban train --out" in result.stderr and "--resume" in result.stderr
    assert position(chain) == (epoch, 2)
    assert assert_intact(chain).state["partial"]["count"] == 2 * 64

    # 4. SIGKILL after the epoch's new checkpoint is complete but before it is renamed: the old one stays valid
    result = resume(chain, kill_at=f"replace:{CHECKPOINT_FILE}:1:before")
    assert killed(result), result.stderr[-2000:]
    assert assert_intact(chain) is not None and position(chain) == (epoch, 2)

    # 5. SIGKILL right after the last epoch's checkpoint is renamed, before metrics.jsonl is rewritten
    result = resume(chain, kill_at=f"replace:{CHECKPOINT_FILE}:{EPOCHS - epoch}:after")
    assert killed(result), result.stderr[-2000:]
    assert position(chain) == (EPOCHS, 0)
    assert len(metrics(chain)) < EPOCHS if (chain / "metrics.jsonl").exists() else True

    # 6. the last --resume has no epoch left to train but still completes the run's reports
    result = resume(chain)
    assert result.returncode == 0, result.stderr[-2000:]

    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]
    expected, got = Checkpoint(straight / CHECKPOINT_FILE), Checkpoint(chain / CHECKPOINT_FILE)
    for part in ("model", "rng", "optimizer_tensors"):
        mine, theirs = getattr(got, part), getattr(expected, part)
        assert mine.keys() == theirs.keys()
        for name, tensor in theirs.items():
            assert torch.equal(mine[name], tensor), (part, name)
    assert metrics(chain) == metrics(straight)
    best, expected_best = Checkpoint(chain / BEST_FILE).model, Checkpoint(straight / BEST_FILE).model
    assert all(torch.equal(best[name], tensor) for name, tensor in expected_best.items())
    assert [record["epoch"] for record in metrics(chain)] == list(range(1, EPOCHS + 1))
    assert not [path.name for path in chain.iterdir() if path.name.startswith(".")]  # the kills' leftovers are gone


def torchrun(arguments: list[str], kill_at: str | None = None, killer: Path | None = None
             ) -> subprocess.CompletedProcess:
    """`ban` under `torchrun` with two processes (gloo); with ``kill_at``, through ``killer`` (KILLER as a file)."""
    program = [str(killer)] if kill_at else ["-m", "ban.cli"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *program,
               *arguments]
    return subprocess.run(command, env=environment(**({"KILL_AT": kill_at} if kill_at else {})),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_torchrun_run_stopped_mid_epoch_resumes_with_the_whole_epochs_metrics(data_dir, tmp_path):
    """Stopped at step 2 of 4, the checkpoint holds both processes' sums so far (it held the main process's only,
    which the resumed epoch then counted twice and the other's not at all)."""
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    common = ["train", "--data", str(data_dir), *TRAIN[2:], "--epochs", "1"]
    straight, chain = tmp_path / "straight", tmp_path / "chain"
    result = torchrun([*common, "--out", str(straight)])
    assert result.returncode == 0, result.stderr[-2000:]
    result = torchrun([*common, "--out", str(chain)], kill_at="step:2:SIGINT", killer=killer)
    assert result.returncode != 0 and position(chain) == (0, 2), result.stderr[-2000:]
    assert f"Continue with: torchrun --nproc_per_node 2 -m ban.cli train --out {chain} --resume" in result.stderr
    result = torchrun(["train", "--out", str(chain), "--resume"])
    assert result.returncode == 0, result.stderr[-2000:]
    (expected,), (got,) = metrics(straight), metrics(chain)
    assert got["samples"] == expected["samples"] == 211  # every training question once
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-9)
    assert got["train_score"] == pytest.approx(expected["train_score"], rel=1e-9)


@pytest.mark.slow
def test_resuming_with_fewer_epochs_than_begun_is_refused(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = ban_train(["train", "--data", str(data_dir), "--out", str(run_dir), *TRAIN], kill_at="step:6:SIGINT")
    assert result.returncode == 130 and position(run_dir) == (1, 2), result.stderr[-2000:]  # epoch 2, step 2
    config = (run_dir / "config.json").read_text()
    result = ban_train(["train", "--out", str(run_dir), "--resume", "--epochs", "1"])
    assert result.returncode == 2 and "its checkpoint is in epoch 2; give --epochs 2 or more" in result.stderr
    assert (run_dir / "config.json").read_text() == config and position(run_dir) == (1, 2)


@pytest.mark.slow
def test_sigterm_to_the_process_group_reaches_the_loader_workers_and_still_saves_the_step(data_dir, tmp_path):
    """torchrun (and a scheduler) signals a worker's whole process group: its data-loader processes got the SIGTERM
    too and died on it, so the step broke off and no checkpoint was written. They ignore it, as they ignore
    Ctrl-C: the step finishes and the checkpoint is saved."""
    run_dir = tmp_path / "run"
    result = ban_train(["train", "--data", str(data_dir), "--out", str(run_dir), *TRAIN, "--set", "num_workers=1"],
                       kill_at="batch:3:SIGTERM")
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert position(run_dir)[0] == 0 and assert_intact(run_dir).state["partial"]["count"] > 0

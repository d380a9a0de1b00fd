"""What `ban predict` does when it is stopped or cannot write: a SIGTERM (a scheduler's, or torchrun's when another
process failed) takes back the file being written as Ctrl-C does; a full disk or a file-size limit is an error
naming the file; and the choices made for torchrun (the GPU of each process, --logits on one machine)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run

from ban import launch
from ban.cli import main
from ban.commands.predict import open_prediction
from ban.data.prepared import read_answers
from ban.engine import distributed
from ban.errors import ConfigError

pytestmark = pytest.mark.slow

# `ban` whose predictions send this process a SIGTERM after the first batch
TERMINATED_BAN = """
import os, signal, sys
import ban.commands.predict
from ban.cli import main

predict_logits = ban.commands.predict.predict_logits

def terminated_after_one_batch(*arguments, **options):
    for number, predicted in enumerate(predict_logits(*arguments, **options)):
        if number == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        yield predicted

ban.commands.predict.predict_logits = terminated_after_one_batch
sys.exit(main())
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("failures"), seed=6)


def earlier_files(folder: Path) -> tuple[Path, Path]:
    """A results file and a logits file that a failed prediction must leave as they are."""
    folder.mkdir()
    (folder / "results.json").write_text("earlier")
    np.save(folder / "logits.npy", np.zeros(3, dtype=np.float32))
    return folder / "results.json", folder / "logits.npy"


def test_sigterm_takes_back_what_predict_was_writing(run_dir, tmp_path):
    results, logits = earlier_files(tmp_path / "out")
    (tmp_path / "terminated_ban.py").write_text(TERMINATED_BAN)
    stopped = subprocess.run([sys.executable, str(tmp_path / "terminated_ban.py"), "predict", str(run_dir), "--split",
                              "val", "--batch-size", "4", "--out", str(results), "--logits", str(logits)],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert stopped.stderr.strip().endswith("ban predict: terminated")
    assert results.read_text() == "earlier" and np.load(logits).tolist() == [0, 0, 0]
    assert sorted(path.name for path in results.parent.iterdir()) == ["logits.npy", "results.json"]  # no temp file


def test_a_file_size_limit_is_an_error_naming_the_file(run_dir, tmp_path):
    results, logits = earlier_files(tmp_path / "out")
    questions = len(np.load(Path(run_dir.parent / "prepared" / "val.npz"))["question_id"])
    size = questions * len(read_answers(run_dir.parent / "prepared")) * 4  # the logits' bytes

    def limit_file_size() -> None:  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    failed = subprocess.run([sys.executable, "-m", "ban.cli", "predict", str(run_dir), "--split", "val", "--out",
                             str(results), "--logits", str(logits)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, preexec_fn=limit_file_size)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert f"ban predict: error: {logits}: cannot be written: File too large" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert results.read_text() == "earlier" and np.load(logits).tolist() == [0, 0, 0]
    assert sorted(path.name for path in results.parent.iterdir()) == ["logits.npy", "results.json"]


def test_logits_are_refused_under_a_torchrun_of_several_machines(run_dir, tmp_path, monkeypatch):
    arguments = argparse.Namespace(run_dir=run_dir, data=None, checkpoint="last", split="val",
                                   out=tmp_path / "results.json", logits=tmp_path / "logits.npy")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # one machine: allowed
    assert not launch.spans_machines()
    open_prediction(arguments)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two machines
    assert launch.spans_machines()
    with pytest.raises(ConfigError, match="--logits under a torchrun of several machines"):
        open_prediction(arguments)
    open_prediction(argparse.Namespace(**{**vars(arguments), "logits": None}))  # answers alone: allowed


@pytest.mark.parametrize(("requested", "local_rank", "visible", "expected"), [
    ("cuda", 0, 4, 0), ("cuda", 3, 4, 3),  # the local rank's GPU
    ("cuda", 1, 1, 0),  # one GPU per process (a per-process CUDA_VISIBLE_DEVICES)
    ("cuda", 4, 4, "local rank 4 but sees 4 GPUs: start at most 4 processes per machine"),
    ("cuda:1", 1, 4, "under torchrun each process takes the GPU of its local rank; give cuda or auto, not cuda:1"),
])
def test_each_torchrun_process_takes_a_gpu_of_its_own(requested, local_rank, visible, expected):
    if isinstance(expected, int):
        assert distributed.local_gpu(torch.device(requested), local_rank, visible, "--device") == expected
    else:
        with pytest.raises(ConfigError, match=expected):
            distributed.local_gpu(torch.device(requested), local_rank, visible, "--device")


def test_the_logits_file_gets_its_disk_space_before_it_is_written(tmp_path):
    """Memory-mapped pages written on a full disk kill the process (SIGBUS): the space is taken up front."""
    from ban.commands.predict import reserve_space

    path = tmp_path / "sparse.bin"
    with open(path, "wb") as file:
        file.truncate(8 << 20)  # 8 MiB, no block allocated
    assert os.stat(path).st_blocks * 512 < 8 << 20
    reserve_space(path)
    assert os.stat(path).st_blocks * 512 >= 8 << 20 and os.stat(path).st_size == 8 << 20


def test_results_that_cannot_be_written_keep_the_earlier_logits(run_dir, tmp_path, monkeypatch, capsys):
    """The logits replace the earlier ones only once the answers are written (a disk full by then, say)."""
    import ban.commands.predict

    results, logits = earlier_files(tmp_path / "out")

    def full_disk(path: Path, data: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ban.commands.predict, "write_file", full_disk)
    assert main(["predict", str(run_dir), "--split", "val", "--out", str(results), "--logits", str(logits)]) == 2
    assert f"{results}: cannot be written: No space left on device" in capsys.readouterr().err
    assert results.read_text() == "earlier" and np.load(logits).tolist() == [0, 0, 0]
    assert sorted(path.name for path in results.parent.iterdir()) == ["logits.npy", "results.json"]


def test_a_folder_that_cannot_be_made_is_refused_before_predicting(run_dir, tmp_path, capsys):
    unmakeable = Path("/proc/ban-test/logits.npy")  # no folder can be made in /proc, not even by root
    assert main(["predict", str(run_dir), "--split", "val", "--out", str(tmp_path / "results.json"), "--logits",
                 str(unmakeable)]) == 2
    captured = capsys.readouterr()
    assert f"{unmakeable}: cannot be written: " in captured.err and "predicting" not in captured.err
    assert not (tmp_path / "results.json").exists()


def sigterm_handler_is_the_default() -> bool:
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_is_raised_once_and_forked_workers_keep_the_default(monkeypatch):
    """A pool's workers are ended by SIGTERM when it closes (a traceback each, had they ban's handler); a second
    SIGTERM must not break off what the first one's exception is taking back."""
    import multiprocessing

    from ban.cli import Terminated, _raise_terminated

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply(sigterm_handler_is_the_default)
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(("option", "inside"), [("--out", "checkpoint.safetensors"), ("--out", "config.json"),
                                                 ("--logits", "report/logits.npy"), ("--out", "DATA/val.npz")])
def test_outputs_over_the_runs_or_its_datasets_own_files_are_refused(run_dir, tmp_path, capsys, option, inside):
    """Predicting into the checkpoint it has just read (or the dataset it answers) lost the run; other names in the
    run directory (results.json) are fine."""
    data_dir = run_dir.parent / "prepared"
    target = data_dir / inside.removeprefix("DATA/") if inside.startswith("DATA/") else run_dir / inside
    before = {path: path.read_bytes() for folder in (run_dir, data_dir) for path in folder.rglob("*") if path.is_file()}
    outputs = {"--out": str(tmp_path / "results.json"), option: str(target)}
    if option == "--logits":
        outputs["--out"] = str(run_dir / "results.json")
    arguments = [argument for pair in outputs.items() for argument in pair]
    assert main(["predict", str(run_dir), "--split", "val", *arguments]) == 2
    assert capsys.readouterr().err == (f"ban predict: error: {option} {target} would overwrite the run's or its "
                                       "dataset's own files: write it elsewhere\n")
    assert {path: path.read_bytes() for path in before} == before
    assert not (run_dir / "results.json").exists()
    assert main(["predict", str(run_dir), "--split", "val", "--out", str(run_dir / "results.json")]) == 0
    assert json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").unlink()


def test_an_output_that_is_a_symlink_loop_is_named(run_dir, tmp_path, capsys):
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    assert main(["predict", str(run_dir), "--split", "val", "--out", str(loop)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"ban predict: error: {loop}: field '--out': cannot resolve (") and "Traceback" not in error

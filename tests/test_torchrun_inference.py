"""`ban evaluate` and `ban predict` under real `torchrun` processes (gloo on the CPU): the processes share the
batches, and the output is one process's — printed once, the same files — errors included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import poison, tiny_run

from ban.cli import main
from ban.engine.evaluation import evaluation_batches
from ban.engine.tasks import make_task

pytestmark = pytest.mark.slow

BATCHES = ["--batch-size", "8", "--device", "cpu"]  # 8 batches of the val split: 4 per process
VAL_QUESTIONS = 58


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("inference"), seed=5)


# `ban` with each process's predicted batches noted in the file $SEEN/RANK (one JSON list of indices a line)
RECORDING_BAN = """
import json, os, sys
import ban.commands.predict, ban.engine.tasks
from ban.cli import main

predict_logits = ban.engine.tasks.predict_logits

def noting_batches(*arguments, **options):
    for indices, batch, logits in predict_logits(*arguments, **options):
        with open(os.path.join(os.environ["SEEN"], os.environ["RANK"]), "a") as seen:
            seen.write(json.dumps(list(indices)) + "\\n")
        yield indices, batch, logits

ban.engine.tasks.predict_logits = ban.commands.predict.predict_logits = noting_batches
sys.exit(main())
"""


def torchrun(*arguments: str, seen: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`ban ARGUMENTS` in two torchrun processes; with ``seen``, each process's batches noted there."""
    command = ["-m", "ban.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if seen is not None:
        seen.mkdir()
        (seen / "noting_ban.py").write_text(RECORDING_BAN)
        command, env["SEEN"] = [str(seen / "noting_ban.py")], str(seen)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *command, *arguments], env=env, capture_output=True, text=True)


def assert_shared(seen: Path, questions: int) -> None:
    """Each of the two processes predicted batches of its own, together every question once."""
    shares = [[index for line in (seen / rank).read_text().splitlines() for index in json.loads(line)]
              for rank in ("0", "1")]
    assert all(shares) and sorted(shares[0] + shares[1]) == list(range(questions))


def test_evaluate_prints_one_processs_metrics_once(run_dir, tmp_path, capsys):
    assert main(["evaluate", str(run_dir), "--json", *BATCHES]) == 0
    single = json.loads(capsys.readouterr().out)
    shared = torchrun("evaluate", str(run_dir), "--json", *BATCHES, seen=tmp_path / "seen")
    assert shared.returncode == 0, shared.stderr[-3000:]
    assert json.loads(shared.stdout) == single  # one JSON document: the main process's alone
    assert_shared(tmp_path / "seen", VAL_QUESTIONS)


def test_predict_writes_one_processs_files(run_dir, tmp_path):
    single, shared = tmp_path / "single", tmp_path / "shared"
    for out in (single, shared):
        out.mkdir()
    assert main(["predict", str(run_dir), "--split", "val", "--out", str(single / "results.json"),
                 "--logits", str(single / "logits.npy"), *BATCHES]) == 0
    launched = torchrun("predict", str(run_dir), "--split", "val", "--out", str(shared / "results.json"),
                        "--logits", str(shared / "logits.npy"), *BATCHES, seen=tmp_path / "seen")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert_shared(tmp_path / "seen", VAL_QUESTIONS)
    assert launched.stdout.count("wrote ") == 1
    assert (shared / "results.json").read_bytes() == (single / "results.json").read_bytes()
    logits = np.load(shared / "logits.npy")
    assert np.isfinite(logits).all() and np.abs(logits).sum(1).min() > 0  # every row written
    np.testing.assert_array_equal(logits, np.load(single / "logits.npy"))
    assert sorted(path.name for path in shared.iterdir()) == ["logits.npy", "results.json"]


@pytest.mark.parametrize(("arguments", "message"), [
    (["evaluate", "{run}", "--split", "test-dev"], "'test-dev' has no annotations"),
    (["evaluate", "{run}/missing"], "missing: no such directory"),
    (["predict", "{run}", "--out", "{run}/x.json", "--logits", "{run}/x.json"],
     "--out and --logits name the same file"),
])
def test_an_error_every_process_meets_is_said_once(run_dir, arguments, message):
    launched = torchrun(*(argument.format(run=run_dir) for argument in arguments), *BATCHES)
    assert launched.returncode != 0
    assert launched.stderr.count(message) == 1, launched.stderr[-3000:]
    assert launched.stdout == ""


def test_bad_data_in_the_second_process_stops_both_and_writes_nothing(run_dir, tmp_path):
    """A NaN image met by the second process only: the main one says so, and no file is written."""
    data_dir = tmp_path / "poisoned"
    shutil.copytree(json.loads((run_dir / "config.json").read_text())["data_dir"], data_dir)
    dataset = make_task("vqa", data_dir).dataset(["val"])
    second = {index for batch in evaluation_batches(dataset, 8)[1::2] for index in batch}
    images = np.load(data_dir / "val.npz")["image_id"]
    question = next(index for index in sorted(second) if second >= set(np.flatnonzero(images == images[index])))
    image_id = poison(data_dir, question, split="val")
    results = tmp_path / "results.json"
    results.write_text("earlier")
    launched = torchrun("predict", str(run_dir), "--data", str(data_dir), "--split", "val", "--out", str(results),
                        "--logits", str(tmp_path / "logits.npy"), *BATCHES)
    assert launched.returncode != 0
    assert launched.stderr.count("the model's output is NaN or infinite") == 1, launched.stderr[-3000:]
    named = int(launched.stderr.split("record question_id=")[1].split(":")[0])
    val = np.load(data_dir / "val.npz")
    assert int(val["image_id"][list(val["question_id"]).index(named)]) == image_id
    assert results.read_text() == "earlier"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["poisoned", "results.json"]  # no temporary file

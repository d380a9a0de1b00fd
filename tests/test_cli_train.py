"""`ban train`, `ban evaluate`, `ban predict` end to end on a small synthetic set, and `torchrun` data parallel."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset, poison
from PIL import Image

from ban.cli import main
from ban.data.features import FeatureStore
from ban.engine.checkpoint import Checkpoint
from ban.engine.config import SYNTHETIC_TRAINING
from ban.engine.run import CHECKPOINT_FILE, abandon_new_run, load_run, read_run_config
from ban.engine.tasks import VQATask, make_task
from ban.engine.trainer import initial_model
from ban.models import preset

SMALL = ["--preset", "tiny", "--set", "model.hidden_dim=16", "--set", "model.word_dim=8", "--set", "batch_size=64"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synthetic"), seed=2)


@pytest.mark.slow
def test_train_evaluate_predict(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "2", *SMALL]) == 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    report = sorted((run_dir / "report").glob("*.png"))  # the run's report shows a few attention pictures
    assert report and all(Image.open(path).size[0] > 100 for path in report)
    # TensorBoard (installed with the dev extra) got one point per epoch of every scalar
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    # in step order: each epoch's writer has its own event file, and files written within one second are read in
    # the order of a process-wide counter compared as text ("…10" before "…9")
    points = sorted(events.Scalars("train_loss"), key=lambda event: event.step)
    assert [event.value for event in points] == pytest.approx([line["train_loss"] for line in lines])
    assert [event.step for event in points] == [1, 2]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["lr"] == 1e-3 and config["train"]["epochs"] == 2  # the paper recipe + overrides
    assert config["model"]["hidden_dim"] == 16 and config["model"]["num_answers"] == len(
        json.loads((data_dir / "answers.json").read_text()))
    capsys.readouterr()

    assert main(["evaluate", str(run_dir), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["overall"] == lines[-1]["val"]["overall"]  # the run's precision, as its validation
    assert main(["evaluate", str(run_dir), "--json", "--precision", "fp32"]) == 0
    loaded = load_run(run_dir)
    exact = make_task("vqa", data_dir).evaluate(loaded.model, "val", 512, torch.device("cpu"), "fp32")
    assert json.loads(capsys.readouterr().out) == exact  # float32 logits on request
    assert make_task("vqa", data_dir).evaluate(loaded.model, "val", 512, torch.device("cpu"), "fp32",
                                               num_workers=2) == exact  # the same batches, loaded by workers
    # the best validation epoch's weights are kept beside the last ones
    assert main(["evaluate", str(run_dir), "--json", "--checkpoint", "best"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == max(line["val"]["overall"] for line in lines)
    assert {"perAnswerType", "trainingScore", "upperBound"} <= set(metrics)
    assert main(["evaluate", str(run_dir), "--split", "test-dev"]) == 2  # no annotations: said before predicting
    assert "'test-dev' has no annotations" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--split", "tset"]) == 2
    assert "manifest.json: field 'splits': no split 'tset' (it has: train, val, test-dev)" in capsys.readouterr().err

    results, logits = tmp_path / "results.json", tmp_path / "logits.npy"
    assert main(["predict", str(run_dir), "--split", "test-dev", "--out", str(results), "--logits", str(logits)]) == 0
    answers = json.loads(results.read_text())
    questions = json.loads((data_dir / "test-dev_questions.json").read_text())["questions"]
    assert sorted(r["question_id"] for r in answers) == sorted(q["question_id"] for q in questions)
    assert all(set(r) == {"question_id", "answer"} and isinstance(r["question_id"], int) for r in answers)
    labels = json.loads((data_dir / "answers.json").read_text())
    table = np.load(logits)
    assert table.shape == (len(answers), len(labels))
    assert [labels[i] for i in table.argmax(axis=1)] == [r["answer"] for r in answers]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logits.npy", "results.json", "run"]  # no temp files
    assert "note:" not in capsys.readouterr().err  # the dataset has no test split to point to

    # with a test split (test2015 ⊇ test-dev), test-dev's answers alone come with the pointer to what EvalAI takes
    with_test = tmp_path / "with-test"
    shutil.copytree(data_dir, with_test, ignore=shutil.ignore_patterns("features"))
    (with_test / "features.json").write_text(json.dumps({"sources": [str(data_dir / "features")]}))
    for suffix in (".npz", "_questions.json"):
        shutil.copy(with_test / f"test-dev{suffix}", with_test / f"test{suffix}")
    manifest = json.loads((with_test / "manifest.json").read_text())
    manifest["splits"]["test"] = manifest["splits"]["test-dev"]
    (with_test / "manifest.json").write_text(json.dumps(manifest))
    assert main(["predict", str(run_dir), "--data", str(with_test), "--out", str(tmp_path / "td.json")]) == 0
    assert "EvalAI's VQA 2.0 phases, test-dev included, take answers to every test2015 question: `--split test`" in (
        capsys.readouterr().err)
    assert main(["predict", str(run_dir), "--data", str(with_test), "--split", "test",
                 "--out", str(tmp_path / "t.json")]) == 0
    assert "note:" not in capsys.readouterr().err

    # `ban evaluate`'s table shows the official scores as `ban score` prints them for the same answers
    assert main(["predict", str(run_dir), "--split", "val", "--out", str(tmp_path / "val.json")]) == 0
    capsys.readouterr()
    assert main(["score", "--questions", str(data_dir / "val_questions.json"), "--annotations",
                 str(data_dir / "val_annotations.json"), "--results", str(tmp_path / "val.json")]) == 0
    scored = capsys.readouterr().out
    assert main(["evaluate", str(run_dir)]) == 0
    evaluated = capsys.readouterr().out
    assert evaluated.startswith("split val\n" + scored.rstrip("\n") + "\n\n") and "upperBound" in evaluated


def test_without_data_ban_train_takes_the_synthetic_recipe_and_learns(data_dir, tmp_path, monkeypatch):
    """The README's first command, `ban train` with no --data, on a small stand-in for the synthetic scenes: the
    tiny preset and the synthetic recipe (batch 32, lr 2e-3, no warm-up or decay), and BAN learns: its loss falls
    epoch by epoch and its val accuracy is at least twice the most frequent answer's (stats.json of the scenes)."""
    import ban.commands.train

    monkeypatch.setattr(ban.commands.train, "synthetic_dataset", lambda: data_dir)
    run_dir = tmp_path / "run"
    assert main(["train", "--out", str(run_dir), "--epochs", "4", "--set", "precision=fp32"]) == 0
    stored = read_run_config(run_dir)
    assert stored.model == preset("tiny", **VQATask(data_dir).model_sizes())
    recipe = {name: getattr(stored.train, name) for name in SYNTHETIC_TRAINING}
    assert recipe == {**SYNTHETIC_TRAINING, "epochs": 4}
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [record["train_loss"] for record in history]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False)), losses
    prior = json.loads((data_dir.parent / "raw" / "stats.json").read_text())["baselines"]["answer_prior"]
    assert history[-1]["val"]["overall"] >= 2 * prior["overall"], (history[-1]["val"], prior)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--preset", "huge"], "unknown preset 'huge'; choose one of grounding, paper-ablation, paper-best, tiny, "
                               "tiny-grounding"),
        (["--set", "learning_rate=1"], "unknown training setting 'learning_rate'"),
        (["--set", "model.glimpses=2"], "unknown model setting 'glimpses'"),
        (["--set", "model.num_answers=3"], "contradicts the data"),
        (["--task", "grounding"], "not a grounding dataset"),
        (["--preset", "tiny", "--set", "model.task=grounding"], "model.task=grounding contradicts the task (vqa)"),
        (["--set", "val_split=vall"], "training setting 'val_split': "),
        (["--set", "train_splits=train,tran"], "has no split 'tran'; it has train, val, test-dev"),
        (["--set", "train_splits=train,test-dev"], "has no training targets; splits that have: train, val"),
        (["--set", "val_split=test-dev"], "has no annotations to score against; splits that have: train, val (an "),
        (["--set", "train_splits=train,val"], "'val_split': 'val' is also in train_splits"),
        (["--set", "decay_epochs=-1"], "'decay_epochs': epochs are counted from 0"),
        (["--set", "num_workers=-1"], "'num_workers' must be non-negative"),
        (["--set", "grad_clip=-1"], "'grad_clip' must be positive"),
        (["--set", "device=tpu"], "'device': 'tpu' is not a device"),
        ([*SMALL, "--epochs", "0", "--set", "device=cuda:99"], "'device': 'cuda:99' is not on this machine"),
    ],
)
def test_bad_arguments_are_clear_errors(data_dir, tmp_path, capsys, arguments, message):
    assert main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_without_validation_says_why_it_has_no_best_checkpoint(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "1", *SMALL,
                 "--set", "val_split="]) == 0
    assert capsys.readouterr().out.endswith(f"done: 1 epoch, every epoch's numbers in {run_dir / 'metrics.jsonl'}\n")
    assert main(["evaluate", str(run_dir), "--checkpoint", "best"]) != 0
    assert "no best checkpoint: it trained without validation" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--checkpoint", "last", "--split", "val"]) == 0


def test_a_deleted_best_checkpoint_is_said_to_be_missing(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "1", *SMALL]) == 0
    (run_dir / "best.safetensors").unlink()
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--checkpoint", "best"]) != 0
    assert (f"{run_dir / 'best.safetensors'}: no best checkpoint: it is missing, though metrics.jsonl records 1 "
            f"validated epoch (moved or deleted?)") in capsys.readouterr().err


def test_checkpoint_best_takes_the_best_epoch_not_the_last(data_dir, tmp_path, capsys):
    """A 2-epoch run whose best validation epoch is the first: epoch 1's best.safetensors (written by training,
    kept aside) put back after epoch 2. `--checkpoint best` then gives epoch 1's weights and score, and `last`
    epoch 2's."""
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "1", *SMALL]) == 0
    assert Checkpoint(run_dir / "best.safetensors").state["epoch"] == 1
    shutil.copy(run_dir / "best.safetensors", tmp_path / "epoch1.safetensors")
    assert main(["train", "--out", str(run_dir), "--resume", "--epochs", "2"]) == 0
    shutil.copy(tmp_path / "epoch1.safetensors", run_dir / "best.safetensors")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]

    epoch1, last = Checkpoint(tmp_path / "epoch1.safetensors").model, Checkpoint(run_dir / CHECKPOINT_FILE).model
    assert any(not torch.equal(tensor, last[name]) for name, tensor in epoch1.items())  # epoch 2 trained on
    for checkpoint, expected in (("best", epoch1), ("last", last)):
        loaded = load_run(run_dir, checkpoint=checkpoint).model.state_dict()
        assert loaded.keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(loaded[name], tensor), (checkpoint, name)
    capsys.readouterr()
    scores = {}
    for checkpoint in ("best", "last"):
        assert main(["evaluate", str(run_dir), "--json", "--checkpoint", checkpoint]) == 0
        scores[checkpoint] = json.loads(capsys.readouterr().out)
    for checkpoint, line in (("best", lines[0]), ("last", lines[1])):  # each as the run validated it
        assert {k: scores[checkpoint][k] for k in ("overall", "perAnswerType", "trainingScore")} == \
               {k: line["val"][k] for k in ("overall", "perAnswerType", "trainingScore")}, checkpoint
    assert scores["best"] != scores["last"]


def test_a_folder_of_other_files_is_not_made_a_run_dir(data_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")  # e.g. --out runs/, the folder every run lies in
    assert main(["train", "--data", str(data_dir), "--out", str(tmp_path), "--epochs", "1", *SMALL]) == 2
    assert "holds other files and no run" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_a_setting_refused_at_the_start_leaves_the_run_dir_free(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    refused = ["--set", "cuda_graphs=true", "--set", "device=cpu"]
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "0", *SMALL, *refused]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert not run_dir.exists()  # the corrected command may use the same --out
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "0", *SMALL]) == 0
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(["train", "--data", str(data_dir), "--out", str(kept), "--epochs", "0", *SMALL, *refused]) == 2
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]  # only what the refused run wrote went


def test_an_error_before_the_first_checkpoint_leaves_a_new_run_dir_free(data_dir, tmp_path, capsys):
    """Any BanError of a new run's set-up (here a damaged glove.npy) undoes start_run; a resumed run keeps its
    files, and so does a diverged one (its message says how to resume it)."""
    damaged = tmp_path / "damaged"
    shutil.copytree(data_dir, damaged)

    def command(run_dir, data=damaged):
        return ["train", "--data", str(data), "--out", str(run_dir), "--epochs", "1", *SMALL]

    resumed = tmp_path / "resumed"  # a run without a checkpoint, as one killed in its first epoch
    assert main([*command(resumed), "--epochs", "0"]) == 0
    (damaged / "glove.npy").write_bytes(b"\x93NUMPY truncated")
    assert main(command(tmp_path / "run")) == 2
    assert "glove.npy: not a readable .npy file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # the command, once the data is fixed, may use the same --out
    assert main([*command(resumed), "--resume"]) == 2
    assert sorted(p.name for p in resumed.iterdir()) == ["config.json"]  # a resumed run loses nothing

    poisoned = tmp_path / "poisoned"
    shutil.copytree(data_dir, poisoned)
    poison(poisoned, question=0)
    assert main([*command(tmp_path / "diverged", poisoned), "--set", "precision=fp32"]) == 2
    assert "non-finite loss at epoch 1" in capsys.readouterr().err
    assert (tmp_path / "diverged" / "config.json").is_file()


def test_a_crash_in_the_first_epoch_leaves_a_new_run_dir_free(data_dir, tmp_path, monkeypatch):
    """Not only ban's own errors: an out-of-memory (injected here into the loss) before the first checkpoint."""
    def out_of_memory(*arguments):
        raise RuntimeError("out of memory (injected)")

    monkeypatch.setattr(VQATask, "loss_sum", out_of_memory)
    with pytest.raises(RuntimeError, match="injected"):
        main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--epochs", "1", *SMALL])
    assert not (tmp_path / "run").exists()


def test_ctrl_c_before_the_training_loop_leaves_a_new_run_dir_free(data_dir, tmp_path, monkeypatch, capsys):
    """A Ctrl-C while the model or the data are being set up (before the loop turns signals into checkpoints)."""
    def interrupted(*arguments, **keywords):
        raise KeyboardInterrupt

    monkeypatch.setattr("ban.engine.trainer.initial_model", interrupted)
    assert main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--epochs", "1", *SMALL]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "ban train: interrupted"
    assert not (tmp_path / "run").exists()  # the same command can start it again


@pytest.mark.parametrize("command", [["evaluate"], ["predict", "--out", "results.json"]])
@pytest.mark.parametrize("size", ["0", "-3", "many"])
def test_batch_size_must_be_a_positive_number(tmp_path, capsys, command, size):
    with pytest.raises(SystemExit) as stopped:  # argparse's usage error, before anything is loaded
        main([command[0], str(tmp_path), *command[1:], "--batch-size", size])
    assert stopped.value.code == 2
    assert "argument --batch-size" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["evaluate", "visualize"])
@pytest.mark.parametrize(("device", "message"), [("tpu", "'tpu' is not a device"),
                                                 ("cuda:99", "'cuda:99' is not on this machine")])
def test_unusable_device_is_a_clear_error(tmp_path, capsys, command, device, message):
    assert main([command, str(tmp_path), "--device", device]) == 2
    assert f"--device: {message}" in capsys.readouterr().err


def test_resume_needs_an_existing_run(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--resume"]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(("data_path", "counting", "clip"), [("loader", False, 0.25), ("resident", True, 1000)])
def test_torchrun_two_processes_equal_one_process_on_the_same_global_batch(data_dir, tmp_path, data_path, counting,
                                                                           clip):
    # Dropout off: the processes draw different dropout noise than one process would (per-sample noise is not
    # tied to the sample), so only the dropout-free computation can be compared. One epoch = 4 steps of 64
    # (the last global batch, 25 questions, is split 13 / 12). Over more steps Adamax amplifies float
    # summation-order noise in near-zero gradient entries (its update is ≈ lr × sign there): after 8 steps the
    # largest weight difference grew to ≈ 2e-4, so a tight comparison needs a short run. Validation: each process
    # evaluates every other batch of 16 of the val split; the metrics equal one process's evaluation of the weights.
    # Clipping: the default, 0.25, clips every step here, and Adamax's update hardly depends on the gradient's scale,
    # so a DDP gradient off by a factor shows in neither the weights nor (clipped) Adamax's moments; unclipped (1000),
    # the moments (exp_avg, exp_inf: linear in the gradient) must equal one process's (a halved gradient halves
    # them; summation-order noise reached 5e-4 relative in a few entries).
    common = ["train", "--data", str(data_dir), "--epochs", "1", *SMALL, "--set", "precision=fp32",
              "--set", "eval_batch_size=16",
              "--set", "model.dropout=0", "--set", "model.attention_dropout=0", "--set", "model.classifier_dropout=0",
              "--set", f"model.use_counting={str(counting).lower()}",  # with counting, parameters without gradients
              "--set", f"grad_clip={clip}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    subprocess.run([sys.executable, "-m", "ban.cli", *common, "--out", str(single)], check=True, env=env,
                   capture_output=True)
    resident = ["--set", "resident=true"] if data_path == "resident" else []  # each process holds the data
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ban.cli",
         *common, *resident, "--out", str(parallel)], env=env, capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "find_unused_parameters" not in launched.stderr  # no false alarm about DDP's settings
    one, two = Checkpoint(single / CHECKPOINT_FILE), Checkpoint(parallel / CHECKPOINT_FILE)
    for name, tensor in one.model.items():
        torch.testing.assert_close(two.model[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    moments = two.optimizer_tensors
    assert moments.keys() == one.optimizer_tensors.keys()
    for name, tensor in one.optimizer_tensors.items():
        torch.testing.assert_close(moments[name], tensor, rtol=2e-3, atol=1e-6, msg=name)
    run = read_run_config(single)
    initial = initial_model(run, make_task("vqa", data_dir)).state_dict()
    assert any(not torch.equal(initial[name], tensor) for name, tensor in two.model.items())  # it did train
    history_one, history_two = one.state["history"], two.state["history"]
    assert [h["samples"] for h in history_two] == [h["samples"] for h in history_one]
    assert history_two[-1]["train_loss"] == pytest.approx(history_one[-1]["train_loss"], rel=1e-6)
    evaluated = subprocess.run([sys.executable, "-m", "ban.cli", "evaluate", str(parallel), "--json",
                                "--batch-size", "16", "--device", "cpu"], env=env, capture_output=True, text=True)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert history_two[-1]["val"] == json.loads(evaluated.stdout)
    assert history_two[-1]["val"]["overall"] == pytest.approx(history_one[-1]["val"]["overall"], abs=2.0)


@pytest.mark.slow
def test_torchrun_refuses_a_batch_smaller_than_its_processes(data_dir, tmp_path):
    """A global batch of 1 split across 2 processes: every batch would be dropped, nothing trained (it exited 0)."""
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ban.cli",
         "train", "--data", str(data_dir), "--out", str(tmp_path / "run"), *SMALL, "--set", "batch_size=1"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert launched.returncode != 0
    assert launched.stderr.count("batch_size 1 is smaller than the number of processes (2)") == 1  # said once
    assert not (tmp_path / "run").exists()


def test_resuming_a_finished_run_says_there_is_nothing_left_to_train(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "1", *SMALL]) == 0
    trained = Checkpoint(run_dir / CHECKPOINT_FILE).model
    capsys.readouterr()
    assert main(["train", "--out", str(run_dir), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"nothing left to train: {run_dir} has finished its 1 epoch; train it further with: ban train --out " \
           f"{run_dir} --resume --epochs N (N > 1)" in out and "done:" not in out
    for name, tensor in Checkpoint(run_dir / CHECKPOINT_FILE).model.items():
        assert torch.equal(tensor, trained[name]), name


def test_resuming_a_run_whose_checkpoint_is_gone_is_refused_and_keeps_its_results(data_dir, tmp_path, capsys):
    """metrics.jsonl is written after each epoch's checkpoint: finished epochs without a checkpoint mean it was lost,
    and starting over would overwrite their metrics and best.safetensors."""
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "2", *SMALL]) == 0
    (run_dir / CHECKPOINT_FILE).unlink()
    kept = {name: (run_dir / name).read_bytes() for name in ("metrics.jsonl", "best.safetensors", "config.json")}
    capsys.readouterr()
    assert main(["train", "--out", str(run_dir), "--resume", "--epochs", "3"]) != 0
    assert (f"{run_dir / CHECKPOINT_FILE}: missing, but {run_dir / 'metrics.jsonl'} records 2 finished epochs: "
            f"restore the checkpoint to resume, or start a new run in another --out") in capsys.readouterr().err
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    assert not (run_dir / CHECKPOINT_FILE).exists()


def test_resume_keeps_the_runs_training_settings_when_a_preset_is_named(data_dir, tmp_path):
    """`--resume --preset tiny` took the default recipe for the training settings and so refused the run."""
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "0", *SMALL,
                 "--set", "lr=0.002"]) == 0
    model = ["--preset", "tiny", "--set", "model.hidden_dim=16", "--set", "model.word_dim=8"]
    assert main(["train", "--out", str(run_dir), "--resume", "--epochs", "0", *model]) == 0
    assert main(["train", "--out", str(run_dir), "--resume", "--epochs", "0", "--set", "eval_batch_size=16",
                 "--set", "num_workers=1"]) == 0  # how validation and loading run, not what they compute


@pytest.mark.slow
def test_grounding_train_and_evaluate(data_dir, tmp_path, capsys):
    from ban.data.flickr30k_prepare import prepare_flickr30k
    from ban.data.synthetic import generate

    generate(tmp_path / "raw", seed=1, num_images=10, feature_dim=16, flickr_images=40, write_images=False,
             workers=1, progress=False)
    flickr = tmp_path / "raw" / "flickr30k"
    prepare_flickr30k(flickr, [flickr / "features.tsv"], tmp_path / "prepared", progress=False)
    run_dir = tmp_path / "run"
    # no --task: the dataset's manifest says grounding
    assert main(["train", "--data", str(tmp_path / "prepared"), "--out", str(run_dir),
                 "--epochs", "1", "--set", "model.hidden_dim=16", "--set", "model.word_dim=8"]) == 0
    assert json.loads((run_dir / "config.json").read_text())["model"]["num_glimpses"] == 1  # the grounding preset
    # the training score counts entities with a ground-truth box, as the reference does (not captions)
    from ban.data.flickr30k import GroundingDataset

    train_entities = sum(int((s["entity_mask"] & s["has_ground_truth"]).sum())
                         for s in GroundingDataset(tmp_path / "prepared", "train"))
    hits = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["train_score"] * train_entities / 100
    assert hits == pytest.approx(round(hits), abs=1e-6)
    task = make_task("grounding", tmp_path / "prepared")
    batch = {"entity_mask": torch.tensor([[True, True, False], [True, False, False]]),
             "has_ground_truth": torch.tensor([[True, True, True], [True, True, False]])}
    batch["targets"] = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    logits = torch.tensor([[[[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]]], [[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]])  # [B,1,N,E]
    assert (task.score_sum(logits, batch), task.score_count(batch)) == (2, 3)  # 2 of 3 entities, not (1/2 + 1) / 2
    bucketed = tmp_path / "bucketed"  # batches of similar box counts, as for VQA: every caption once an epoch
    assert main(["train", "--data", str(tmp_path / "prepared"), "--out", str(bucketed), "--epochs", "1",
                 "--set", "model.hidden_dim=16", "--set", "model.word_dim=8", "--set", "bucket_boxes=true"]) == 0
    assert json.loads((bucketed / "metrics.jsonl").read_text())["samples"] == len(
        GroundingDataset(tmp_path / "prepared", "train"))
    assert main(["train", "--data", str(tmp_path / "prepared"), "--out", str(tmp_path / "tiny"), "--preset", "tiny",
                 "--epochs", "1"]) == 2
    assert "preset 'tiny' is a vqa model, but the task is grounding (presets for grounding: grounding, " \
           "tiny-grounding)" in capsys.readouterr().err
    small = tmp_path / "tiny-grounding"  # the CPU-sized grounding model (docs/synthetic.md)
    assert main(["train", "--data", str(tmp_path / "prepared"), "--out", str(small), "--preset", "tiny-grounding",
                 "--epochs", "1"]) == 0
    model = json.loads((small / "config.json").read_text())["model"]
    assert (model["task"], model["hidden_dim"], model["num_glimpses"], model["dropout"]) == ("grounding", 128, 1, 0)
    assert "recall@1" in json.loads((small / "metrics.jsonl").read_text())["val"]
    assert main(["train", "--data", str(tmp_path / "prepared"), "--out", str(tmp_path / "g2"), "--epochs", "1",
                 "--set", "model.num_glimpses=2"]) == 2
    assert "grounding trains one glimpse (G = 1, as the reference" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--data", str(data_dir)]) == 2  # a VQA dataset: the task is named
    assert (f"{data_dir / 'manifest.json'}: field 'task': a vqa dataset, but the run is a grounding model: give a "
            f"dataset prepared for grounding") in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--split", "test", "--json", "--precision", "fp32"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics["perType"]) <= {"people", "clothing", "bodyparts", "animals", "vehicles", "instruments",
                                       "scene", "other"}
    # the same recall, counted caption by caption from the trained model's float32 scores over the real boxes
    from ban.data.flickr30k import GroundingDataset

    run = load_run(run_dir)
    hits, reachable, scored = {1: 0, 5: 0, 10: 0}, 0, 0
    with torch.no_grad():
        for sample in GroundingDataset(tmp_path / "prepared", "test"):
            out = run.model(sample["features"][None], sample["boxes"][None], sample["tokens"][None],
                            sample["entity_positions"][None], entity_mask=sample["entity_mask"][None])
            for entity in torch.nonzero(sample["entity_mask"] & sample["has_ground_truth"]).flatten().tolist():
                order = sorted(range(len(sample["features"])), key=lambda box: -float(out.logits[0, 0, box, entity]))
                positives = {box for box in order if sample["targets"][box, entity] > 0}
                scored += 1
                reachable += bool(positives)
                for k in hits:
                    hits[k] += bool(positives.intersection(order[:k]))
    assert metrics["count"] == scored > 0
    assert metrics["upperBound"] == pytest.approx(100 * reachable / scored)
    for k, hit in hits.items():
        assert metrics[f"recall@{k}"] == pytest.approx(100 * hit / scored)
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--split", "test", "--precision", "fp32"]) == 0  # the table
    table = capsys.readouterr().out
    assert f"recall@1                   {metrics['recall@1']:6.2f}" in table
    assert f"count                      {metrics['count']:6d}" in table
    kind, figures = next(iter(metrics["perType"].items()))
    assert f"  {kind:<24} recall@1 {figures['recall@1']:6.2f}  recall@5" in table
    untrained = initial_model(run.config, make_task("grounding", tmp_path / "prepared")).state_dict()
    assert any(not torch.equal(value, untrained[name]) for name, value in run.model.state_dict().items())


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`ban synth --json | head -1`: the closed pipe ends the command with the shell's SIGPIPE status, no traceback."""
    command = [sys.executable, "-m", "ban.cli", "synth", "--out", str(tmp_path / "scenes"), "--images", "20",
               "--flickr-images", "0", "--no-png", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before anything is written
    errors = process.stderr.read().decode()
    assert process.wait() == 141
    assert "Traceback" not in errors and "BrokenPipeError" not in errors


def test_the_readmes_question_to_a_trained_run_answers_it(data_dir, tmp_path, capsys, monkeypatch):
    assert main(["train", "--data", str(data_dir), "--out", str(tmp_path / "runs" / "demo"), "--epochs", "1",
                 *SMALL]) == 0
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "ban.load_run(" in block]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    image_id, answer = capsys.readouterr().out.split(maxsplit=1)
    run = load_run(tmp_path / "runs" / "demo")
    assert int(image_id) in FeatureStore.open(run.data_dir / "features.json").image_ids.tolist()
    assert answer.strip() in json.loads((run.data_dir / "answers.json").read_text())


def test_abandoning_a_new_run_takes_the_best_weights_its_failed_epoch_kept(tmp_path):
    # keep_if_best writes best.safetensors before the epoch's checkpoint: an error in between left it behind, and
    # the corrected command was then refused ("holds other files and no run")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.json", "best.safetensors"):
        (run_dir / name).write_text("written by the failed run")
    abandon_new_run(run_dir)
    assert not run_dir.exists()


@pytest.mark.parametrize(("settings", "lr"), [
    (["--set", "val_split="], 7e-4),  # the reference's base rate without validation (its test-dev schedule)
    (["--set", "val_split=", "--set", "lr=1e-3"], 1e-3),  # one given is kept
    ([], 1e-3),
])
def test_a_vqa_run_without_validation_takes_the_references_learning_rate(data_dir, tmp_path, capsys, settings, lr):
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "0", *settings]) == 0
    train_settings = json.loads((run_dir / "config.json").read_text())["train"]
    assert train_settings["lr"] == lr and train_settings["decay_epochs"] == [10, 12, 14, 16, 18]

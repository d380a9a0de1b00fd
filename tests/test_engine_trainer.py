"""The training loop on a small synthetic VQA set: resume is bit-exact, metrics are right, bad runs are refused."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset

import ban.nn.fc
from ban import kernels
from ban.engine.checkpoint import Checkpoint
from ban.engine.config import TrainConfig
from ban.engine.run import CHECKPOINT_FILE, RunConfig, fingerprint, load_run, start_run
from ban.engine.tasks import VQATask
from ban.engine.trainer import TrainingInterrupted, summarise, train
from ban.errors import ConfigError, DataError
from ban.metrics.vqa import score_files
from ban.models import preset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synthetic"), seed=1)


def small_run(data_dir: Path, **train: object) -> RunConfig:
    """A 2-glimpse tiny BAN with the paper's dropout rates (so that dropout masks take part in every comparison)."""
    task = VQATask(data_dir)
    model = preset("tiny", hidden_dim=16, word_dim=8, num_glimpses=2, dropout=0.2, attention_dropout=0.5,
                   classifier_dropout=0.5, **task.model_sizes())
    config = TrainConfig(**{"batch_size": 64, "epochs": 2, "lr": 2e-3, "warmup": (0.5, 1.0), **train})
    return RunConfig("vqa", str(data_dir), model, config, fingerprint(data_dir))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return Checkpoint(run_dir / CHECKPOINT_FILE).model


def interrupt_at_batch(task: VQATask, batch_number: int) -> VQATask:
    """Make the task's collate function send SIGINT to this process when it builds the given batch."""
    calls = [0]
    collate = task.collate

    def collate_and_interrupt(samples):
        calls[0] += 1
        if calls[0] == batch_number:
            os.kill(os.getpid(), signal.SIGINT)
        return collate(samples)

    task.collate = collate_and_interrupt
    return task


def without_scored_sum(path: Path) -> None:
    """Rewrite a mid-epoch checkpoint as versions before the scored units were summed wrote it: its partial sums
    without "scored" (tensors and the rest of the metadata as they are)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    state = json.loads(metadata["state"])
    del state["partial"]["scored"]
    save_file(tensors, str(path), metadata={**metadata, "state": json.dumps(state)})


@pytest.mark.slow
def test_interrupted_and_resumed_runs_end_with_the_same_weights(data_dir, tmp_path):
    run = small_run(data_dir)
    straight = tmp_path / "straight"
    start_run(straight, run, resume=False)
    history = train(straight, run, VQATask(data_dir))

    # Ctrl-C in epoch 2 (4 batches an epoch + 1 val batch: batch 7 is step 2 of epoch 2), then --resume
    stopped = tmp_path / "stopped"
    start_run(stopped, run, resume=False)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(stopped, run, interrupt_at_batch(VQATask(data_dir), 7))
    assert Checkpoint(stopped / CHECKPOINT_FILE).state["epoch"] == 1
    assert Checkpoint(stopped / CHECKPOINT_FILE).state["step"] == 2
    older = tmp_path / "older"  # the same checkpoint as a version without the "scored" sum wrote it
    shutil.copytree(stopped, older)
    without_scored_sum(older / CHECKPOINT_FILE)
    start_run(stopped, run, resume=True)
    resumed_history = train(stopped, run, VQATask(data_dir), resume=True)
    start_run(older, run, resume=True)
    older_history = train(older, run, VQATask(data_dir), resume=True)

    # Ctrl-C while epoch 1's validation batch is loaded (batch 5): the validation is given up, the checkpoint holds
    # the whole epoch (step 4 of 4) (validation draws no random numbers); the resume validates, goes on
    in_validation = tmp_path / "in_validation"
    start_run(in_validation, run, resume=False)
    with pytest.raises(TrainingInterrupted, match="while validating epoch 1.*--resume"):
        train(in_validation, run, interrupt_at_batch(VQATask(data_dir), 5))
    state = Checkpoint(in_validation / CHECKPOINT_FILE).state
    assert (state["epoch"], state["step"], state["history"]) == (0, 4, [])
    start_run(in_validation, run, resume=True)
    validated_history = train(in_validation, run, VQATask(data_dir), resume=True)

    # stopped after epoch 1, continued with more epochs (the one setting that may change on resume)
    extended = tmp_path / "extended"
    short = small_run(data_dir, epochs=1)
    start_run(extended, short, resume=False)
    train(extended, short, VQATask(data_dir))
    start_run(extended, run, resume=True)
    train(extended, run, VQATask(data_dir), resume=True)

    reference = weights(straight)
    for other in (stopped, extended, in_validation):
        for name, tensor in weights(other).items():
            assert torch.equal(tensor, reference[name]), (other.name, name)
    drop = ("seconds", "samples_per_s")
    for other_history in (resumed_history, older_history, validated_history):
        assert [{k: v for k, v in r.items() if k not in drop} for r in other_history] == \
               [{k: v for k, v in r.items() if k not in drop} for r in history]
    lines = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert (straight / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tensorboard_steps(stopped) == tensorboard_steps(extended) == [1, 2]  # each epoch once, resumed or not


def tensorboard_steps(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    # sorted: each epoch's writer has its own event file, read in name order, and two names made within the same
    # second differ only in a process-wide counter compared as text ("…10" before "…9")
    return sorted(event.step for event in events.Scalars("train_loss"))


def test_a_resume_reports_the_epoch_a_kill_left_unreported(tmp_path):
    """Killed between the checkpoint and metrics.jsonl: the resume writes the missing epoch, to TensorBoard too."""
    from ban.engine.reporting import report_epoch, report_resumed

    history = [{"epoch": 1, "lr": 1e-3, "train_loss": 2.0, "train_score": 10.0},
               {"epoch": 2, "lr": 1e-3, "train_loss": 1.5, "train_score": 20.0}]
    report_epoch(tmp_path, history[:1])
    report_resumed(tmp_path, history)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    report_resumed(tmp_path, history)
    assert tensorboard_steps(tmp_path) == [1, 2]


def test_with_the_cpu_kernels_training_follows_pytorch_and_resumes_exactly(data_dir, tmp_path, monkeypatch, kernel):
    """What `ban train` does for paper-best models on the CPU (compiled kernels, fused Adamax with the clipping
    folded in, batched GRU gradients), here forced on the small model: close to PyTorch's operators in fp32, and a
    resumed run ends bit-identical to a straight one (the dropout masks come from seeds drawn from torch's RNG)."""
    compiled_calls = [0]
    original = ban.nn.fc._CompiledWeightNormLinear.apply

    def counted(*args):
        compiled_calls[0] += 1
        return original(*args)

    monkeypatch.setattr(ban.nn.fc._CompiledWeightNormLinear, "apply", counted)
    monkeypatch.setattr(kernels, "MIN_PARAMETERS", 0)
    run = small_run(data_dir, precision="fp32")
    histories, calls = {}, {}
    for name, switch in (("kernels", "1"), ("pytorch", "0")):
        monkeypatch.setenv("BAN_CPU_KERNELS", switch)
        start_run(tmp_path / name, run, resume=False)
        before = compiled_calls[0]
        histories[name] = train(tmp_path / name, run, VQATask(data_dir))
        calls[name] = compiled_calls[0] - before
    assert calls["kernels"] > 0 and calls["pytorch"] == 0
    ours, theirs = weights(tmp_path / "kernels"), weights(tmp_path / "pytorch")
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[name], rtol=1e-4, atol=1e-6, msg=name)
    np.testing.assert_allclose([r["train_loss"] for r in histories["kernels"]],
                               [r["train_loss"] for r in histories["pytorch"]], rtol=1e-4)

    monkeypatch.setenv("BAN_CPU_KERNELS", "1")
    stopped = tmp_path / "stopped"
    start_run(stopped, run, resume=False)
    with pytest.raises(TrainingInterrupted):
        train(stopped, run, interrupt_at_batch(VQATask(data_dir), 7))
    start_run(stopped, run, resume=True)
    train(stopped, run, VQATask(data_dir), resume=True)
    for name, tensor in weights(stopped).items():
        assert torch.equal(tensor, ours[name]), name


def test_resident_data_trains_to_the_same_weights_as_the_loader(data_dir, tmp_path, monkeypatch):
    """resident=true gathers the same batches on the device, for training and for validation (no loader at all):
    in float32 the run is bit-identical."""
    histories = {}
    for resident in (False, True):
        run = small_run(data_dir, precision="fp32", resident=resident)
        start_run(tmp_path / str(resident), run, resume=False)
        if resident:
            monkeypatch.setattr(VQATask, "loader", lambda *args, **kwargs: pytest.fail("validation used a loader"))
        histories[resident] = train(tmp_path / str(resident), run, VQATask(data_dir))
    loader_weights = weights(tmp_path / "False")
    for name, tensor in weights(tmp_path / "True").items():
        assert torch.equal(tensor, loader_weights[name]), name
    assert [r["train_loss"] for r in histories[True]] == [r["train_loss"] for r in histories[False]]
    assert [r["val"] for r in histories[True]] == [r["val"] for r in histories[False]] and histories[True][0]["val"]


def test_validating_or_not_trains_the_same_weights(data_dir, tmp_path):
    """An evaluation draws nothing from the training's random stream (its dropout masks): with or without the
    end-of-epoch validation, the weights are bit-identical."""
    for val_split in ("val", ""):
        run = small_run(data_dir, val_split=val_split)
        start_run(tmp_path / (val_split or "none"), run, resume=False)
        train(tmp_path / (val_split or "none"), run, VQATask(data_dir))
    unvalidated = weights(tmp_path / "none")
    for name, tensor in weights(tmp_path / "val").items():
        assert torch.equal(tensor, unvalidated[name]), name


def test_the_schedule_sets_the_optimizers_learning_rate_each_epoch(data_dir, tmp_path):
    """lr 2e-3 with warm-up factors (0.5, 1) trains at 1e-3, then 2e-3: exactly what lr 1e-3 with factors (1, 2)
    trains at, so the weights are bit-identical; a constant 1e-3 trains other weights. A schedule logged but not
    given to the optimizer would train the first two at different rates; one given only at the first epoch would
    train all three alike. The epochs' records say the rates."""
    runs = {"half": (2e-3, (0.5, 1.0)), "double": (1e-3, (1.0, 2.0)), "constant": (1e-3, (1.0,))}
    for name, (lr, warmup) in runs.items():
        run = small_run(data_dir, lr=lr, warmup=warmup, precision="fp32", val_split="")
        start_run(tmp_path / name, run, resume=False)
        history = train(tmp_path / name, run, VQATask(data_dir))
        expected = [1e-3, 1e-3] if name == "constant" else [1e-3, 2e-3]
        assert [record["lr"] for record in history] == pytest.approx(expected, rel=1e-12)
    half, double, constant = (weights(tmp_path / name) for name in runs)
    for name, tensor in half.items():
        assert torch.equal(tensor, double[name]), name
    assert any(not torch.equal(tensor, constant[name]) for name, tensor in half.items())


def test_bucketed_batches_train_on_every_question_once_per_epoch(data_dir, tmp_path):
    run = small_run(data_dir, epochs=1, bucket_boxes=True)
    start_run(tmp_path, run, resume=False)
    record = train(tmp_path, run, VQATask(data_dir))[-1]
    assert record["samples"] == len(VQATask(data_dir).dataset(["train"])) and np.isfinite(record["train_loss"])


def test_validation_metrics_match_a_naive_recomputation(data_dir, tmp_path):
    """The epoch's val numbers equal: one-question-at-a-time predictions scored from files by the official
    metric, and the training-time score / upper bound summed by hand from the prepared targets."""
    run = small_run(data_dir, epochs=1, precision="fp32")
    start_run(tmp_path, run, resume=False)
    record = train(tmp_path, run, VQATask(data_dir))[-1]
    loaded = load_run(tmp_path)
    arrays = np.load(data_dir / "val.npz")
    labels = json.loads((data_dir / "answers.json").read_text())
    task = VQATask(data_dir)
    dataset = task.dataset(["val"])
    results, scores, bounds = [], [], []
    with torch.no_grad():
        for index in range(len(dataset)):
            best = int(task.forward(loaded.model, task.collate([dataset[index]])).argmax())
            results.append({"question_id": int(arrays["question_id"][index]), "answer": labels[best]})
            start, end = arrays["target_offsets"][index], arrays["target_offsets"][index + 1]
            target = dict(zip(arrays["target_labels"][start:end].tolist(), arrays["target_scores"][start:end].tolist(),
                              strict=True))
            scores.append(target.get(best, 0.0))
            bounds.append(max(target.values(), default=0.0))
    (tmp_path / "results.json").write_text(json.dumps(results))
    official = score_files(data_dir / "val_questions.json", data_dir / "val_annotations.json",
                           tmp_path / "results.json")
    val = record["val"]
    assert val["overall"] == official["overall"] and val["perAnswerType"] == official["perAnswerType"]
    assert val["trainingScore"] == pytest.approx(100 * np.mean(scores), abs=1e-4)
    assert val["upperBound"] == pytest.approx(100 * np.mean(bounds), abs=1e-4)


def test_the_training_score_is_the_soft_target_of_the_arg_max_answer(data_dir, tmp_path):
    """The training score is the mean soft target of each question's arg-max answer, not its best target (the upper
    bound): by hand on a batch whose arg-max answers are not their best ones, and over the train split for an epoch
    whose weights cannot move (lr 1e-30, below a float32 step of any weight; dropout off), recomputed from the
    initial model and the prepared targets."""
    from ban.engine.trainer import initial_model

    task = VQATask(data_dir)
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0], [0.0, 0.5, 0.4]])
    targets = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.0, 0.9], [0.6, 0.0, 1.0]])
    batch = {"features": torch.zeros(3, 2, 4), "targets": targets}
    # arg-max answers 1, 0, 1: targets 0.3, 0, 0 (mean 0.1); their best targets 1, 0.9, 1
    assert 100 * float(task.score_sum(logits, batch) / task.score_count(batch)) == pytest.approx(10.0)

    run = small_run(data_dir, epochs=1, lr=1e-30, precision="fp32", val_split="")
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, dropout=0.0, attention_dropout=0.0,
                                                             classifier_dropout=0.0))
    start_run(tmp_path, run, resume=False)
    record = train(tmp_path, run, task)[-1]
    model = initial_model(run, task).eval()
    trained = weights(tmp_path)
    assert all(torch.equal(trained[name], tensor) for name, tensor in model.state_dict().items())  # did not move
    dataset = task.dataset(["train"])
    with torch.no_grad():
        whole = task.collate([dataset[index] for index in range(len(dataset))])
        chosen = task.forward(model, whole).argmax(dim=1, keepdim=True)
    assert record["train_score"] == pytest.approx(100 * float(whole["targets"].gather(1, chosen).mean()), abs=1e-4)


def test_a_run_directory_is_not_overwritten_or_resumed_with_another_config(data_dir, tmp_path):
    run = small_run(data_dir)
    start_run(tmp_path, run, resume=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        start_run(tmp_path, run, resume=False)
    with pytest.raises(ConfigError, match="train.lr"):
        start_run(tmp_path, small_run(data_dir, lr=1e-4), resume=True)
    other_model = RunConfig("vqa", run.data_dir, run.model.replace(hidden_dim=24), run.train, run.fingerprint)
    with pytest.raises(ConfigError, match="model.hidden_dim"):
        start_run(tmp_path, other_model, resume=True)


def test_a_split_the_data_lacks_is_refused_before_training(data_dir, tmp_path):
    for settings, message in ((dict(val_split="vall"), "'val_split'.*no split 'vall'"),
                              (dict(train_splits=("train", "vg-train")), "'train_splits'.*no split 'vg-train'")):
        run = small_run(data_dir, epochs=1, **settings)
        start_run(tmp_path / "run", run, resume=False)
        with pytest.raises(ConfigError, match=message):  # in Python as on the command line
            train(tmp_path / "run", run, VQATask(data_dir))
        assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()
        shutil.rmtree(tmp_path / "run")


def test_a_new_run_may_not_validate_on_a_split_it_trains_on_but_an_earlier_such_run_resumes(data_dir, tmp_path):
    """Validating on a training split would score training questions and pick best.safetensors by them: a new run
    is refused. A run whose config.json says so (written before the rule) still trains on when resumed."""
    run = small_run(data_dir, epochs=1, train_splits=("train", "val"))
    with pytest.raises(ConfigError, match="'val_split': 'val' is also in train_splits.*--set val_split="):
        start_run(tmp_path / "new", run, resume=False)
    assert not (tmp_path / "new").exists()
    start_run(tmp_path / "old", dataclasses.replace(run, train=dataclasses.replace(run.train, val_split="")),
              resume=False)
    stored = json.loads((tmp_path / "old" / "config.json").read_text())
    stored["train"]["val_split"] = "val"  # as an earlier version wrote it
    (tmp_path / "old" / "config.json").write_text(json.dumps(stored))
    start_run(tmp_path / "old", run, resume=True)
    history = train(tmp_path / "old", run, VQATask(data_dir), resume=True)
    assert len(history) == 1 and history[0]["val"]["overall"] >= 0


def test_data_with_another_vocabulary_is_refused(data_dir, tmp_path):
    run = small_run(data_dir, epochs=1)
    run_dir = tmp_path / "run"
    start_run(run_dir, run, resume=False)
    train(run_dir, run, VQATask(data_dir))
    other = make_dataset(tmp_path / "other", seed=1, min_answer_count=5)  # same questions, more answers
    with pytest.raises(DataError, match="answers.json: differs from the answers.json the run was trained with"):
        load_run(run_dir, other)
    (other / "answers.json").unlink()
    with pytest.raises(DataError, match="answers.json: missing: the run was trained with one"):
        load_run(run_dir, other)
    with pytest.raises(DataError, match="not there .moved or deleted.*--data"):
        load_run(run_dir, tmp_path / "gone")
    moved = RunConfig("vqa", str(other), run.model, run.train, fingerprint(other))
    with pytest.raises(ConfigError, match="not the prepared dataset the run trained on .answers.json, manifest.json "
                                          "differ"):
        start_run(run_dir, moved, resume=True)


def test_data_with_other_features_is_refused_by_name(data_dir, tmp_path):
    """The same questions (dictionary and answers) with 8-d features: the 16-d run's model cannot read them."""
    run = small_run(data_dir, epochs=1)
    run_dir = tmp_path / "run"
    start_run(run_dir, run, resume=False)
    train(run_dir, run, VQATask(data_dir))
    other = make_dataset(tmp_path / "other", seed=1, feature_dim=8)
    assert fingerprint(other)["dictionary.json"] == run.fingerprint["dictionary.json"]
    with pytest.raises(DataError, match=r"manifest.json: field 'feature_dim': its features are 8-d; the run's model "
                                        r"reads 16-d ones"):
        load_run(run_dir, other)


def test_resuming_on_other_data_with_the_same_vocabulary_is_refused(data_dir, tmp_path):
    """A train-only dataset from the same raw files has the same dictionary and answers, not the same data: a run
    may be evaluated on it, not resumed on it. The same dataset copied elsewhere resumes."""
    from ban.data.vqa2 import prepare_vqa2

    run = small_run(data_dir, epochs=1)
    run_dir = tmp_path / "run"
    start_run(run_dir, run, resume=False)
    train(run_dir, run, VQATask(data_dir))
    raw = data_dir.parent / "raw"
    subset = tmp_path / "train-only"
    prepare_vqa2(raw / "vqa", sorted((raw / "features").glob("*.tsv")), subset, splits=["train"], progress=False)
    assert {name: fingerprint(subset)[name] for name in ("dictionary.json", "answers.json")} == {
        name: run.fingerprint[name] for name in ("dictionary.json", "answers.json")}
    longer = dataclasses.replace(run.train, epochs=2)
    on_subset = RunConfig("vqa", str(subset), run.model, longer, fingerprint(subset))
    with pytest.raises(ConfigError, match=f"cannot resume {run_dir} on {subset}: it is not the prepared dataset the "
                                          f"run trained on \\(manifest.json differs; it trained on {data_dir}\\)"):
        start_run(run_dir, on_subset, resume=True)
    assert load_run(run_dir, subset).data_dir == subset  # evaluating on it is fine
    moved = tmp_path / "moved"
    shutil.copytree(data_dir, moved)
    start_run(run_dir, RunConfig("vqa", str(moved), run.model, longer, fingerprint(moved)),
              resume=True)
    config = json.loads((run_dir / "config.json").read_text())  # as written before manifests were fingerprinted
    del config["fingerprint"]["manifest.json"]
    (run_dir / "config.json").write_text(json.dumps(config))
    start_run(run_dir, RunConfig("vqa", str(moved), run.model, longer, fingerprint(moved)),
              resume=True)


def test_synthetic_dataset_is_generated_once_and_cached(tmp_path):
    from ban.engine.synthetic import synthetic_dataset

    prepared = synthetic_dataset(seed=3, num_images=10, feature_dim=8, root=tmp_path)
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["feature_dim"] == 8 and {"train", "val", "test-dev"} <= set(manifest["splits"])
    stamp = (prepared / "manifest.json").stat().st_mtime_ns
    assert synthetic_dataset(seed=3, num_images=10, feature_dim=8, root=tmp_path) == prepared
    assert (prepared / "manifest.json").stat().st_mtime_ns == stamp  # reused, not prepared again
    assert (prepared.parent / "raw" / "stats.json").is_file()  # the generator's baselines stay available
    # no Flickr30k part (nothing reads it), and the VQA part is `ban synth`'s own, which makes one as well
    from ban.data.synthetic import generate

    raw = prepared.parent / "raw"
    assert not (raw / "flickr30k").exists()
    generate(tmp_path / "synth", seed=3, num_images=10, feature_dim=8, progress=False, workers=1)
    assert (tmp_path / "synth" / "flickr30k").is_dir()
    for name in ("vqa", "features", "images"):
        files = sorted(path.relative_to(raw / name) for path in (raw / name).rglob("*") if path.is_file())
        assert files and all((raw / name / file).read_bytes() == (tmp_path / "synth" / name / file).read_bytes()
                             for file in files), name
        assert files == sorted(path.relative_to(tmp_path / "synth" / name)
                               for path in (tmp_path / "synth" / name).rglob("*") if path.is_file())


def test_processes_starting_together_build_the_synthetic_dataset_once(tmp_path):
    """The ranks of `torchrun` without --data all ask for the cache at once: one builds it, the others wait and
    find it complete (two building at once removed each other's files). The lock is held here while both start,
    so that both wait for it whatever the timing."""
    from ban.engine.synthetic import synthetic_dataset
    from ban.filelock import held

    home = tmp_path / "synthetic-seed3-images10-dim8"
    home.mkdir()
    code = ("import sys; from pathlib import Path; from ban.engine.synthetic import synthetic_dataset; "
            "print(synthetic_dataset(seed=3, num_images=10, feature_dim=8, root=Path(sys.argv[1])))")
    with held(tmp_path / f"{home.name}.lock", "") as locked:
        assert locked
        processes = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(2)]
        errors = [""] * 2
        for _ in range(300):  # both waiting (at most 30 s, for the imports)
            time.sleep(0.1)
            if all("waiting for another process" in error for error in errors):
                break
            errors = [error + os.read(process.stderr.fileno(), 4096).decode() if process.poll() is None
                      else error for error, process in zip(errors, processes, strict=True)]
        assert all("waiting for another process preparing" in error for error in errors), errors
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [error for _, error in outputs]
    assert {output.strip() for output, _ in outputs} == {str(home / "prepared")}
    built = ["ban synth" in errors[i] + outputs[i][1] for i in range(2)]
    assert sorted(built) == [False, True]  # generated by one of them only
    assert synthetic_dataset(seed=3, num_images=10, feature_dim=8, root=tmp_path) == home / "prepared"


def test_the_epoch_line_prints_counts_as_integers():
    record = {"epoch": 3, "train_loss": 0.5, "train_score": 80.0, "lr": 1e-3, "samples_per_s": 1500.0,
              "val": {"recall@1": 77.891, "count": 859, "perType": {"people": {"count": 3}}}}
    assert summarise(record).endswith("val recall@1 77.89  count 859")


def test_best_weights_are_written_only_when_the_score_beats_every_earlier_epoch(data_dir, tmp_path):
    """keep_if_best on a real trainer with made-up histories: best.safetensors is (re)written for a score above
    every earlier one; a lower or equal score, or one above some earlier epochs only, leaves it as it is."""
    from ban.engine.distributed import DistContext
    from ban.engine.run import BEST_FILE
    from ban.engine.trainer import Trainer

    run = small_run(data_dir, epochs=1)
    start_run(tmp_path, run, resume=False)
    trainer = Trainer(tmp_path, run, VQATask(data_dir), DistContext(0, 1, torch.device("cpu")), resume=False)
    best = tmp_path / BEST_FILE

    def epoch_with(epoch: int, overall: float, earlier: list[float | None]) -> int | None:
        """Offer epoch ``epoch`` scoring ``overall`` after epochs scoring ``earlier`` (None: not validated); → the
        epoch best.safetensors holds after that (None: no file)."""
        trainer.history = [{"epoch": i + 1, "train_loss": 1.0} if score is None else
                           {"epoch": i + 1, "train_loss": 1.0, "val": {"overall": score}}
                           for i, score in enumerate(earlier)]
        with torch.no_grad():  # other weights each time, to see which were written
            next(trainer.model.parameters()).fill_(float(epoch))
        trainer.keep_if_best({"epoch": epoch, "val": {"overall": overall}})
        if not best.exists():
            return None
        stored = Checkpoint(best)
        first = next(iter(trainer.model.state_dict()))
        assert float(stored.model[first].flatten()[0]) == stored.state["epoch"]  # the weights of that epoch
        return stored.state["epoch"]

    assert not best.exists()
    assert epoch_with(1, 40.0, []) == 1  # the first validated epoch is the best so far
    assert epoch_with(2, 30.0, [40.0]) == 1  # lower: kept
    assert epoch_with(3, 40.0, [40.0, 30.0]) == 1  # equal to the best: kept (the earlier epoch stays)
    assert epoch_with(4, 35.0, [40.0, 30.0, 40.0]) == 1  # above some earlier epochs, not all: kept
    assert epoch_with(5, 40.5, [40.0, 30.0, 40.0, 35.0]) == 5  # higher than every one: written
    assert Checkpoint(best).state["val"] == {"overall": 40.5}
    assert epoch_with(6, 50.0, [None, 30.0, None]) == 6  # epochs without validation do not count
    trainer.keep_if_best({"epoch": 7, "train_loss": 0.1})  # no validation this epoch: nothing written
    assert Checkpoint(best).state["epoch"] == 6
    trainer.release_wrapper()

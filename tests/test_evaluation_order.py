"""Evaluation and prediction batches in box-count order (less padding), results still in the dataset's order;
their loader's worker processes and pinned memory; the forward passes under ``torch.inference_mode``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, make_dataset
from torch.utils.data import DataLoader

from ban.cli import main
from ban.commands.trained_run import loader_workers
from ban.engine import evaluation
from ban.engine.evaluation import box_count_batches, predict_logits
from ban.engine.run import load_run
from ban.engine.tasks import make_task


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synthetic"), seed=3)


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(run_dir), "--epochs", "1", *TINY_RUN]) == 0
    return run_dir


def in_dataset_order(monkeypatch) -> list[int]:
    """Make every evaluation loader batch the samples in the dataset's order (the path before box-count order);
    the list returned gets the size of each dataset so batched (a test checks the change was in effect)."""
    batched: list[int] = []

    def equal_counts(dataset) -> np.ndarray:
        batched.append(len(dataset))
        return np.zeros(len(dataset), dtype=np.int64)

    monkeypatch.setattr(evaluation, "dataset_box_counts", equal_counts)
    return batched


def test_batches_are_cut_from_a_stable_sort_by_box_count():
    assert box_count_batches(np.array([5, 3, 5, 1, 3]), 2) == [[3, 1], [4, 0], [2]]
    assert box_count_batches(np.full(5, 36), 2) == [[0, 1], [2, 3], [4]]  # fixed box counts: the dataset's order
    assert box_count_batches(np.zeros(0, dtype=np.int64), 4) == []


def test_the_evaluation_loader_pads_less_than_the_dataset_order(data_dir):
    task = make_task("vqa", data_dir)
    dataset = task.dataset(["val"])
    counts = task.box_counts(dataset)
    assert counts.min() < counts.max()  # the synthetic scenes have 10–36 boxes
    loader = task.loader(dataset, 16)
    padded = sum(batch["box_mask"].numel() for batch in loader)
    in_order = sum(len(counts[start:start + 16]) * int(counts[start:start + 16].max())
                   for start in range(0, len(counts), 16))
    assert sorted(i for batch in loader.batch_sampler for i in batch) == list(range(len(dataset)))
    assert padded == sum(len(b) * int(counts[b].max()) for b in loader.batch_sampler) < 0.9 * in_order


def test_evaluate_and_predict_give_what_the_dataset_order_gives(run_dir, data_dir, tmp_path, monkeypatch, capsys):
    """float32 logits: the same metrics, the same results file byte for byte, the same logits rows (up to the
    float noise of other batch shapes); and the same metrics with the batches loaded by 2 worker processes."""
    outputs = {}
    for name in ("by boxes", "in order"):
        if name == "in order":
            batched = in_dataset_order(monkeypatch)
        results, logits = tmp_path / f"{name}.json", tmp_path / f"{name}.npy"
        capsys.readouterr()
        assert main(["evaluate", str(run_dir), "--json", "--precision", "fp32", "--batch-size", "16"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert main(["predict", str(run_dir), "--split", "val", "--batch-size", "16", "--precision", "fp32",
                     "--out", str(results), "--logits", str(logits)]) == 0
        outputs[name] = metrics, results.read_bytes(), np.load(logits)
    (metrics, results, logits), (metrics_in_order, results_in_order, logits_in_order) = outputs.values()
    assert len(batched) == 2  # `ban evaluate` and `ban predict` "in order" were
    assert metrics == metrics_in_order
    assert results == results_in_order
    np.testing.assert_allclose(logits, logits_in_order, rtol=1e-5, atol=1e-5)
    questions = json.loads((data_dir / "val_questions.json").read_text())["questions"]
    assert [r["question_id"] for r in json.loads(results)] == [q["question_id"] for q in questions]
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--json", "--precision", "fp32", "--batch-size", "16",
                 "--workers", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == metrics


def test_grounding_recall_is_the_same_in_box_count_order_and_in_shards(tmp_path, monkeypatch):
    from ban.data.flickr30k_prepare import prepare_flickr30k
    from ban.data.synthetic import generate
    from ban.engine.config import TrainConfig
    from ban.engine.run import RunConfig, fingerprint
    from ban.engine.trainer import initial_model
    from ban.models import preset

    generate(tmp_path / "raw", seed=1, num_images=10, feature_dim=16, flickr_images=24, write_images=False,
             workers=1, progress=False)
    flickr = tmp_path / "raw" / "flickr30k"
    prepare_flickr30k(flickr, [flickr / "features.tsv"], tmp_path / "prepared", progress=False)
    task = make_task("grounding", tmp_path / "prepared")
    counts = evaluation.dataset_box_counts(task.dataset(["test"]))
    assert counts.min() < counts.max()
    model = initial_model(RunConfig("grounding", str(tmp_path / "prepared"),
                                    preset("grounding", hidden_dim=16, word_dim=8, **task.model_sizes()),
                                    TrainConfig(), fingerprint(tmp_path / "prepared")), task)
    by_boxes = task.evaluate(model, "test", 4, torch.device("cpu"), "fp32")
    parts = [task.evaluation_part(model, "test", 4, torch.device("cpu"), "fp32", shard=(rank, 3)) for rank in range(3)]
    assert task.metrics("test", parts[::-1]) == by_boxes  # the shards of three processes, scored together
    batched = in_dataset_order(monkeypatch)
    assert task.evaluate(model, "test", 4, torch.device("cpu"), "fp32") == by_boxes and batched


def test_the_forward_passes_run_in_inference_mode_with_the_loader_asked_for(run_dir, data_dir, monkeypatch):
    """Workers as given, pinned memory for a CUDA device only (checked without one: the loader is replaced by an
    empty one, so nothing reaches the device)."""
    task = make_task("vqa", data_dir)
    model = load_run(run_dir).model
    dataset = task.dataset(["val"])
    for _, batch, logits in predict_logits(task, model, dataset, 64, torch.device("cpu"), "fp32"):
        assert logits.is_inference() and batch["features"].is_inference()
    asked = []

    def loader(dataset, batch_size, num_workers=0, pin_memory=False, shard=(0, 1)):
        asked.append((num_workers, pin_memory, shard))
        return DataLoader([], batch_sampler=[])

    monkeypatch.setattr(task, "loader", loader)
    for device in ("cpu", "cuda"):
        assert list(predict_logits(task, model, dataset, 64, torch.device(device), "fp32", num_workers=3,
                                   shard=(1, 2))) == []
    assert asked == [(3, False, (1, 2)), (3, True, (1, 2))]


def test_workers_default_to_the_runs_num_workers_setting():
    loaded = SimpleNamespace(config=SimpleNamespace(train=SimpleNamespace(num_workers=3)))
    assert loader_workers(argparse.Namespace(workers=None), loaded) == 3
    assert loader_workers(argparse.Namespace(workers=0), loaded) == 0


@pytest.mark.parametrize("processes", [2, 3, 40])
def test_the_shards_of_an_evaluation_score_what_one_process_scores(run_dir, data_dir, processes):
    """Each process of a run evaluates every K-th batch (:func:`evaluation.sharded_batches`); their parts, in any order,
    give :meth:`Task.evaluate`'s metrics exactly — also when some shard has no batch at all (40 shards)."""
    task = make_task("vqa", data_dir)
    model = load_run(run_dir).model
    dataset = task.dataset(["val"])
    shards = [evaluation.sharded_batches(dataset, 16, (rank, processes)) for rank in range(processes)]
    assert sorted(map(tuple, sum(shards, []))) == sorted(map(tuple, evaluation.evaluation_batches(dataset, 16)))
    assert (not all(shards)) == (processes == 40)
    parts = [task.evaluation_part(model, "val", 16, torch.device("cpu"), "fp32", shard=(rank, processes))
             for rank in range(processes)]
    assert task.metrics("val", parts[::-1]) == task.evaluate(model, "val", 16, torch.device("cpu"), "fp32")

"""``ban train``'s CUDA-graph step (``cuda_graphs=true``) checked on the CPU, where its graphs' steps run eagerly
(``StepGraphs(capture=False)``): the same training as the eager trainer over batches of many shapes and a changing
learning rate, from a loader and from resident data; NaN batches skipped exactly as the eager trainer skips them;
a resumed run continues exactly; ``train()`` refuses the setting where graphs cannot run. The capture itself
needs a GPU: benchmarks/device_check.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine_trainer import make_dataset
from test_graphs import HostReads
from test_reliability_divergence import BATCH, poison, poisoned_batches
from torch._dynamo.utils import counters

from ban.engine import distributed
from ban.engine.checkpoint import Checkpoint, save_checkpoint
from ban.engine.config import TrainConfig
from ban.engine.distributed import DistContext
from ban.engine.run import RunConfig, fingerprint, start_run
from ban.engine.tasks import VQATask
from ban.engine.trainer import Trainer, check_step_settings, train
from ban.errors import ConfigError
from ban.models import preset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("synthetic"), seed=3)


def dropout_free_run(data_dir: Path, **train: object) -> RunConfig:
    """A 2-glimpse tiny BAN without dropout (the eager trainer and the graphs draw their masks differently), fp32,
    batches grouped by box count (many batch shapes: many gradient graphs sharing one set of gradient buffers),
    a learning rate that changes every epoch."""
    task = VQATask(data_dir)
    model = preset("tiny", hidden_dim=16, word_dim=8, num_glimpses=2, dropout=0.0, attention_dropout=0.0,
                   classifier_dropout=0.0, **task.model_sizes())
    config = TrainConfig(**{"batch_size": 16, "epochs": 2, "lr": 2e-3, "warmup": (0.5, 1.0), "precision": "fp32",
                            "bucket_boxes": True, "val_split": "", **train})
    return RunConfig("vqa", str(data_dir), model, config, fingerprint(data_dir))


def fit(run_dir: Path, run: RunConfig, resume: bool = False) -> Trainer:
    """Train as ``train()`` does, past its refusal of cuda_graphs off a GPU; → the trainer after its epochs."""
    start_run(run_dir, run, resume=resume)
    trainer = Trainer(run_dir, run, VQATask(run.data_dir), distributed.setup("cpu"), resume)
    trainer.fit()
    return trainer


# Without counting, the glimpse bias shifts every logit of its glimpse's softmax alike: its gradient is zero up to
# rounding, which Adamax scales to whole steps, so its value follows the summation order (the graphs' boxes padded
# to a multiple of 4, the compiled kernels' own order) rather than the training.
GRADIENT_FREE = ("attention.glimpse_bias",)


def assert_same_training(graphed: Trainer, eager: Trainer, unordered: tuple[str, ...] = ()) -> None:
    """Same epochs and weights; ``unordered``: parameters whose value depends on the summation order (not
    compared)."""
    for ours, theirs in zip(graphed.history, eager.history, strict=True):
        assert ours["samples"] == theirs["samples"]
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        assert ours["train_score"] == pytest.approx(theirs["train_score"], abs=1e-9)
    for (name, p), q in zip(graphed.model.named_parameters(), eager.model.parameters(), strict=True):
        if name not in unordered:
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("resident", [False, True], ids=["loader", "resident"])
def test_the_graphed_step_trains_like_the_eager_trainer(data_dir, tmp_path, resident):
    eager = fit(tmp_path / "eager", dropout_free_run(data_dir, resident=resident))
    graphed = fit(tmp_path / "graphed", dropout_free_run(data_dir, resident=resident, cuda_graphs=True))
    assert_same_training(graphed, eager, unordered=GRADIENT_FREE)
    shapes = [dict(key)["features"] for key in
              ({name: shape for name, shape, _ in key} for key in graphed.graphs.gradient_graphs.captured)]
    assert len({shape[1] for shape in shapes}) > 1 and all(shape[1] % 4 == 0 for shape in shapes)
    assert len(graphed.graphs.update_graph.captured) == 1
    assert graphed.graphs.update.lr.item() == pytest.approx(graphed.optimizer.param_groups[0]["lr"])


@pytest.mark.slow
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_the_compiled_step_trains_like_the_eager_trainer(data_dir, tmp_path, graphs):
    """``compile=true``: the forward pass (and with the graphs the update) through torch.compile, the same training
    (fp32, no dropout: the compiled masks are drawn by Inductor's generator)."""
    settings = dict(bucket_boxes=False, epochs=2)
    eager = fit(tmp_path / "eager", dropout_free_run(data_dir, **settings))
    graphs_before = counters["stats"]["unique_graphs"]
    compiled = fit(tmp_path / "compiled", dropout_free_run(data_dir, compile=True, cuda_graphs=graphs, **settings))
    assert counters["stats"]["unique_graphs"] > graphs_before  # Dynamo did compile the step
    assert_same_training(compiled, eager, unordered=GRADIENT_FREE)


def test_the_graphed_step_reads_nothing_on_the_host(data_dir, tmp_path):
    """Between a batch's arrival and the host's look at finiteness nothing waits for the device."""
    trainer = fit(tmp_path / "run", dropout_free_run(data_dir, epochs=1, cuda_graphs=True))
    batch = VQATask(data_dir).collate([trainer.data[index] for index in range(16)])
    inputs = trainer.device_batch(batch)  # the loader's work, on the host (packed_rows reads the host's box mask)
    rows, slots = inputs["rows"].numel(), inputs["features"].shape[1]
    assert slots % 4 == 0 and (rows % 1024 == 0 or rows == 16 * slots)  # the graphs' quanta
    with HostReads() as graphed:
        _, _, norm = trainer.graphs.gradients(inputs)
        trainer.graphs.apply(norm)
    assert graphed.seen == []


def test_eager_batches_bring_their_packing_rows_so_the_forward_pass_counts_nothing(data_dir, tmp_path):
    trainer = fit(tmp_path / "run", dropout_free_run(data_dir, epochs=0))
    batch = VQATask(data_dir).collate([trainer.data[index] for index in range(16)])
    with HostReads() as unpacked:
        trainer.gradients(batch, 16)
    assert "nonzero" in unpacked.seen  # the model counts the real boxes itself: the check can fail
    inputs = trainer.device_batch(batch)
    assert torch.equal(inputs["rows"], batch["box_mask"].flatten().nonzero().squeeze(1))  # exact: no padding
    with HostReads() as packed:
        trainer.gradients(inputs, 16)
    assert "nonzero" not in packed.seen


def test_a_resumed_graphed_run_continues_exactly(data_dir, tmp_path):
    straight = fit(tmp_path / "straight", dropout_free_run(data_dir, cuda_graphs=True))
    fit(tmp_path / "stopped", dropout_free_run(data_dir, cuda_graphs=True, epochs=1))
    resumed = fit(tmp_path / "stopped", dropout_free_run(data_dir, cuda_graphs=True), resume=True)
    for (name, p), q in zip(resumed.model.named_parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert resumed.history[1]["train_loss"] == straight.history[1]["train_loss"]


def test_a_run_may_switch_the_graphs_on_or_off_when_resumed(data_dir, tmp_path):
    """cuda_graphs changes how a step runs, not what it computes: a resumed run may change it (other settings not)."""
    eager_first = fit(tmp_path / "run", dropout_free_run(data_dir, epochs=1))
    graphed_after = fit(tmp_path / "run", dropout_free_run(data_dir, cuda_graphs=True), resume=True)
    assert [r["epoch"] for r in graphed_after.history] == [1, 2] and graphed_after.graphs is not None
    assert graphed_after.history[0] == eager_first.history[0]
    with pytest.raises(ConfigError, match="train.lr"):
        start_run(tmp_path / "run", dropout_free_run(data_dir, cuda_graphs=True, lr=1e-3), resume=True)


def test_graphed_training_skips_nan_batches_as_the_eager_trainer_does(tmp_path):
    data_dir = make_dataset(tmp_path / "poisoned", seed=5)
    image_id = poison(data_dir, question=100)
    settings = dict(batch_size=BATCH, epochs=1, skip_nonfinite=True, bucket_boxes=False)
    eager = fit(tmp_path / "eager", dropout_free_run(data_dir, **settings))
    graphed = fit(tmp_path / "graphed", dropout_free_run(data_dir, cuda_graphs=True, **settings))
    hit = poisoned_batches(data_dir, image_id, seed=1204, epoch=0)
    assert graphed.history[0]["skipped_batches"] == eager.history[0]["skipped_batches"] == len(hit) >= 1
    assert np.isfinite(graphed.history[0]["train_loss"])
    assert_same_training(graphed, eager)


def test_train_refuses_cuda_graphs_where_they_cannot_run(data_dir, tmp_path):
    run = dropout_free_run(data_dir, cuda_graphs=True)
    start_run(tmp_path, run, resume=False)
    with pytest.raises(ConfigError, match="needs a CUDA device; this run trains on cpu"):
        train(tmp_path, run, VQATask(data_dir))
    gpu = torch.device("cuda")  # only the device's kind is read: no GPU needed
    with pytest.raises(ConfigError, match="one process"):
        check_step_settings(run, DistContext(0, 2, gpu))
    grounding = RunConfig("grounding", run.data_dir, run.model, run.train, run.fingerprint)
    with pytest.raises(ConfigError, match="BAN on VQA only, not for grounding"):
        check_step_settings(grounding, DistContext(0, 1, gpu))
    unitary = RunConfig("vqa", run.data_dir, dataclasses.replace(run.model, attention="unitary"), run.train)
    with pytest.raises(ConfigError, match="BAN on VQA only, not for vqa with unitary attention"):
        check_step_settings(unitary, DistContext(0, 1, gpu))
    check_step_settings(run, DistContext(0, 1, gpu))
    compiled = dataclasses.replace(run, train=dataclasses.replace(run.train, cuda_graphs=False, compile=True))
    check_step_settings(compiled, DistContext(0, 1, torch.device("cpu")))  # compiles on a CPU too
    with pytest.raises(ConfigError, match="compile=true trains in one process"):
        check_step_settings(compiled, DistContext(0, 2, gpu))
    with pytest.raises(ConfigError, match="compile=true is implemented for BAN on VQA only"):
        check_step_settings(dataclasses.replace(compiled, task="grounding"), DistContext(0, 1, gpu))


def test_a_checkpoint_of_a_capturable_optimizer_resumes_where_this_run_keeps_its_state(tmp_path):
    """A GPU run with graphs keeps Adamax's step counters on the device (capturable); the same checkpoint resumed
    on the CPU must not carry that setting over (PyTorch would keep it and refuse the CPU step)."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adamax(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer.param_groups[0]["capturable"] = True  # as torch.optim.Adamax(capturable=True) on a GPU saves it
    save_checkpoint(tmp_path / "c.safetensors", model, optimizer, {})
    resumed = torch.optim.Adamax(model.parameters(), lr=0.1)
    Checkpoint(tmp_path / "c.safetensors").load_optimizer(resumed)
    assert resumed.param_groups[0]["capturable"] is False
    assert resumed.state[model.weight]["step"].item() == 1
    model(torch.ones(1, 3)).sum().backward()
    resumed.step()
    assert resumed.state[model.weight]["step"].item() == 2

"""A model output that is NaN or infinite (region features changed to NaN after `ban prepare` checked them) is a
clear error naming the prepared dataset, the sample and the field — in `ban evaluate`, `ban predict`, `ban
visualize`, grounding evaluation and a training run's validation — never a silently wrong score or answer, nor a
traceback; earlier outputs stay, and a training epoch is checkpointed before its validation fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, make_dataset, poison

from ban.cli import main
from ban.engine.checkpoint import Checkpoint
from ban.engine.run import CHECKPOINT_FILE
from ban.engine.tasks import make_task


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("clean"), seed=4)


@pytest.fixture(scope="module")
def trained(clean, tmp_path_factory) -> tuple[Path, Path, int]:
    """(run dir trained on clean data, a copy of the data with one val image's features NaN, that image's id)."""
    root = tmp_path_factory.mktemp("nonfinite")
    run_dir = root / "run"
    assert main(["train", "--data", str(clean), "--out", str(run_dir), "--epochs", "1", *TINY_RUN]) == 0
    poisoned = root / "poisoned"
    shutil.copytree(clean, poisoned)
    return run_dir, poisoned, poison(poisoned, question=7, split="val")


def image_of_named_question(message: str, data_dir: Path) -> int:
    """The image of the question a non-finite-output error names (its wording checked)."""
    prefix = f"{data_dir}: record question_id="
    assert prefix in message and "field 'features': the model's output is NaN or infinite" in message, message
    val = np.load(data_dir / "val.npz")
    question_id = int(message.split(prefix)[1].split(":")[0])
    return int(val["image_id"][list(val["question_id"]).index(question_id)])


@pytest.mark.parametrize("batch_size", ["4", "4096"])  # many batches and a single one
def test_evaluate_names_a_question_on_the_poisoned_image(trained, capsys, batch_size):
    run_dir, poisoned, image_id = trained
    assert main(["evaluate", str(run_dir), "--data", str(poisoned), "--batch-size", batch_size, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no metrics printed
    assert image_of_named_question(captured.err, poisoned) == image_id


def test_predict_fails_and_keeps_the_earlier_results(trained, tmp_path, capsys):
    run_dir, poisoned, image_id = trained
    results, logits = tmp_path / "results.json", tmp_path / "logits.npy"
    results.write_text("earlier")
    assert main(["predict", str(run_dir), "--data", str(poisoned), "--split", "val", "--batch-size", "4",
                 "--out", str(results), "--logits", str(logits)]) == 2
    assert image_of_named_question(capsys.readouterr().err, poisoned) == image_id
    assert results.read_text() == "earlier" and not logits.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.json"]  # no temporary file left


def test_visualize_names_the_question_instead_of_a_traceback(trained, tmp_path, capsys):
    run_dir, poisoned, image_id = trained
    val = np.load(poisoned / "val.npz")
    question_id = int(val["question_id"][np.flatnonzero(val["image_id"] == image_id)[0]])
    assert main(["visualize", str(run_dir), "--data", str(poisoned), "--questions", str(question_id),
                 "--out", str(tmp_path / "pictures")]) == 2
    assert f"record question_id={question_id}: field 'features'" in capsys.readouterr().err
    assert not (tmp_path / "pictures").exists()


def test_grounding_evaluation_names_the_caption(tmp_path):
    from ban.data.flickr30k_prepare import prepare_flickr30k
    from ban.data.synthetic import generate
    from ban.engine.config import TrainConfig
    from ban.engine.run import RunConfig, fingerprint
    from ban.engine.trainer import initial_model
    from ban.errors import DataError
    from ban.models import preset

    generate(tmp_path / "raw", seed=1, num_images=10, feature_dim=16, flickr_images=24, write_images=False,
             workers=1, progress=False)
    flickr, prepared = tmp_path / "raw" / "flickr30k", tmp_path / "prepared"
    prepare_flickr30k(flickr, [flickr / "features.tsv"], prepared, progress=False)
    task = make_task("grounding", prepared)
    model = initial_model(RunConfig("grounding", str(prepared), preset("grounding", hidden_dim=16, word_dim=8,
                                                                       **task.model_sizes()),
                                    TrainConfig(), fingerprint(prepared)), task)
    task.evaluate(model, "test", 4, torch.device("cpu"), "fp32")  # clean: fine
    image_id = poison(prepared, question=3, split="test")
    with pytest.raises(DataError, match=rf"record sentence \d+ \(image_id={image_id}\): field 'features'"):
        make_task("grounding", prepared).evaluate(model, "test", 4, torch.device("cpu"), "fp32")


def test_a_validation_stopped_by_bad_data_keeps_the_epoch_and_resumes_once_mended(clean, trained, tmp_path, capsys):
    """The epoch's training is checkpointed before the error (it used to be lost with it, or validated silently
    into a wrong score); mended data, the resume validates it: the same weights and numbers as a straight run."""
    straight, _, _ = trained
    poisoned, run_dir = tmp_path / "poisoned", tmp_path / "run"
    shutil.copytree(clean, poisoned)
    image_id = poison(poisoned, question=7, split="val")
    assert main(["train", "--data", str(poisoned), "--out", str(run_dir), "--epochs", "1", *TINY_RUN]) == 2
    message = capsys.readouterr().err
    assert image_of_named_question(message, poisoned) == image_id
    assert f"Epoch 1 is checkpointed without its validation; once the data is mended, continue with: ban train " \
           f"--out {run_dir} --resume" in message
    state = Checkpoint(run_dir / CHECKPOINT_FILE).state
    assert (state["epoch"], state["step"], state["history"]) == (0, 4, [])  # the epoch's 4 steps, not validated
    shutil.copy(clean / "features" / "features.npy", poisoned / "features" / "features.npy")
    assert main(["train", "--out", str(run_dir), "--resume"]) == 0
    expected, got = Checkpoint(straight / CHECKPOINT_FILE), Checkpoint(run_dir / CHECKPOINT_FILE)
    assert got.state["history"][0]["val"] == expected.state["history"][0]["val"]
    assert all(torch.equal(got.model[name], tensor) for name, tensor in expected.model.items())


class OneInfiniteLogit(torch.nn.Module):
    """The wrapped model with one logit of the batch's second question infinite (the rest of its row finite)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs, **options):
        out = self.model(*inputs, **options)
        out.logits[1, 0] = float("inf")
        return out


def test_one_infinite_logit_is_enough_to_name_its_question(clean, trained):
    """Not only a row that is non-finite throughout (NaN features) is refused: one infinite answer logit among
    finite ones is named too, as the first such question of the evaluation order (the first batch's second)."""
    from ban.engine.evaluation import evaluation_batches
    from ban.engine.run import load_run
    from ban.errors import DataError

    task = make_task("vqa", clean)
    model = OneInfiniteLogit(load_run(trained[0]).model)
    first_batch = evaluation_batches(task.dataset(["val"]), 4)[0]
    expected = task.sample_record(task.dataset(["val"]), first_batch[1])
    with pytest.raises(DataError, match=rf"record {expected}: field 'features': the model's output is NaN"):
        task.evaluate(model, "val", 4, torch.device("cpu"), "fp32")

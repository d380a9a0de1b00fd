"""The learning-curve picture a run writes after each epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from ban.engine.reporting import log_tensorboard
from ban.errors import DataError
from ban.viz.curves import learning_curves_figure, plot_learning_curves


def history(epochs: int) -> list[dict[str, object]]:
    """Epoch records as the trainer writes them, with a nested validation result."""
    return [{"epoch": epoch, "lr": 1e-3, "train_loss": 3.0 / epoch, "train_score": 20.0 * epoch,
             "val": {"score": 15.0 * epoch, "perQuestionType": {"what": 10.0}}} for epoch in range(1, epochs + 1)]


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_learning_curves_are_ticked_at_whole_epochs(epochs: int, tmp_path: Path) -> None:
    """A one-epoch run was ticked 0.96–1.04, a three-epoch one at 1.25, 1.75: epochs are whole numbers."""
    figure = learning_curves_figure(history(epochs))
    figure.draw_without_rendering()  # the ticks the saved PNG shows
    for axes in figure.axes:
        low, high = axes.get_xlim()
        shown = [tick for tick in axes.get_xticks() if low <= tick <= high]
        assert shown == list(range(1, epochs + 1)), axes.get_ylabel()
        labels = [label.get_text() for label in axes.get_xticklabels() if low <= label.get_position()[0] <= high]
        assert labels == [str(epoch) for epoch in range(1, epochs + 1)]
    plot_learning_curves(history(epochs), tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.width > 600


def test_tensorboard_gets_every_scalar_of_each_epoch_nested_ones_by_path(tmp_path: Path) -> None:
    """One writer per epoch appends to run_dir/tensorboard; read back with TensorBoard's own reader, every number
    of the records is there at its epoch, the validation's as ``val/<name>`` (and deeper: ``val/<name>/<key>``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = history(2)
    for record in records:
        log_tensorboard(tmp_path, record)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["lr", "train_loss", "train_score", "val/perQuestionType/what",
                                                "val/score"]
    for tag, expected in (("train_loss", [3.0, 1.5]), ("val/score", [15.0, 30.0]), ("val/perQuestionType/what",
                                                                                     [10.0, 10.0])):
        logged = events.Scalars(tag)
        assert [event.step for event in logged] == [1, 2]
        assert [event.value for event in logged] == pytest.approx(expected), tag


def test_a_file_where_the_tensorboard_folder_goes_is_named(tmp_path: Path) -> None:
    """It was TensorBoard's FileExistsError, a traceback after the epoch's checkpoint."""
    (tmp_path / "tensorboard").write_text("a file")
    with pytest.raises(DataError) as caught:
        log_tensorboard(tmp_path, {"epoch": 1, "train_loss": 0.5})
    assert str(caught.value) == f"{tmp_path / 'tensorboard'}: exists and is not a directory"

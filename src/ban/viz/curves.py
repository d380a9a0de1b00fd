"""The learning-curve picture a run rewrites after each epoch, from its epoch records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ban.engine.reporting import scalars
from ban.viz.figures import new_figure, save_png

CURVES_DPI = 100
PLOTTED_APART = ("val/perQuestionType", "val/perType")  # a curve per question / entity type: too many to read


def plot_learning_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Write :func:`learning_curves_figure` of ``history`` to ``path`` as a PNG."""
    save_png(learning_curves_figure(history), path, bbox_inches="tight", dpi=CURVES_DPI)


def learning_curves_figure(history: list[dict[str, Any]]) -> Figure:
    """Loss (left) and scores in % (right: the training score and every validation score but the per-question-
    and per-entity-type ones, which stay in metrics.jsonl and TensorBoard) per epoch, ticked at whole epochs."""
    rows = [scalars(record) for record in history]
    epochs = [row["epoch"] for row in rows]
    figure = new_figure(12, 4)
    loss_axes, score_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["train_loss"] for row in rows], marker="o", label="train loss")
    loss_axes.set_ylabel("loss")
    loss_axes.legend()
    score_keys = ["train_score"] + sorted({k for row in rows for k in row if k.startswith("val/")
                                           and not k.startswith(PLOTTED_APART)})
    for key in score_keys:
        points = [(row["epoch"], row[key]) for row in rows if key in row]
        score_axes.plot(*zip(*points, strict=True), marker="o", label=key)
    score_axes.set_ylabel("%")
    score_axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)  # beside the curves
    for axes in (loss_axes, score_axes):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs, even one
    figure.tight_layout()
    return figure

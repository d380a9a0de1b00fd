"""What a run writes about its progress: metrics.jsonl, a learning-curve picture, TensorBoard (if installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ban.data.atomic import write_with
from ban.numbers import is_number

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "learning_curves.png"


def report_epoch(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl and the learning curves from ``history``; log the last epoch to TensorBoard."""
    write_metrics(run_dir / METRICS_FILE, history)
    plot_learning_curves(history, run_dir / CURVES_FILE)
    log_tensorboard(run_dir, history[-1])


def report_resumed(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """On resuming a run with ``history`` [one record per finished epoch]: :func:`report_epoch` if metrics.jsonl
    misses its last epoch (a kill between the checkpoint and the report), else nothing — TensorBoard, which
    appends, gets each epoch once."""
    path = run_dir / METRICS_FILE
    written = path.read_bytes().count(b"\n") if path.is_file() else 0  # lines counted, not decoded: any bytes do
    if written < len(history):
        report_epoch(run_dir, history)


def recorded_epochs(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of ``run_dir``'s metrics.jsonl ([] without one); lines that are not a JSON object are
    passed over: the file is a report the run wrote, read here only to say what a run has done."""
    path = run_dir / METRICS_FILE
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """One JSON object per epoch, one per line (rewritten whole, atomically, so a resumed run stays consistent)."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    write_with(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric values of an epoch record, nested ones as ``val/<name>``."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in scalars(value).items()})
        elif is_number(value):
            flat[key] = float(value)
    return flat


PLOTTED_APART = ("val/perQuestionType", "val/perType")  # a curve per question / entity type: too many to read


def plot_learning_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Write :func:`learning_curves_figure` of ``history`` to ``path`` as a PNG."""
    figure = learning_curves_figure(history)
    write_with(path, lambda temp: figure.savefig(temp, format="png", dpi=100, bbox_inches="tight"))


def learning_curves_figure(history: list[dict[str, Any]]) -> Figure:
    """Loss (left) and scores in % (right: the training score and every validation score but the per-question-
    and per-entity-type ones, which stay in metrics.jsonl and TensorBoard) per epoch, ticked at whole epochs."""
    from matplotlib.figure import Figure  # outside pyplot: the process's backend and figures are left alone
    from matplotlib.ticker import MaxNLocator

    rows = [scalars(record) for record in history]
    epochs = [row["epoch"] for row in rows]
    figure = Figure(figsize=(12, 4))
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


def log_tensorboard(run_dir: Path, record: dict[str, Any]) -> None:
    """Append the epoch's scalars to a TensorBoard log in ``run_dir/tensorboard`` when TensorBoard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for key, value in scalars(record).items():
            if key != "epoch":
                writer.add_scalar(key, value, int(record["epoch"]))

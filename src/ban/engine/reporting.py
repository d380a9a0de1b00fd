"""What a run writes about its progress: metrics.jsonl, a learning-curve picture (:mod:`ban.viz.curves`),
TensorBoard (if installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ban.data.atomic import make_directory, unwritable, write_file
from ban.numbers import is_number

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "learning_curves.png"
TENSORBOARD_DIR = "tensorboard"
REPORT_DIR = "report"  # the attention pictures written at the end of training (ban.viz.report)


def report_epoch(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl and the learning curves from ``history``; log the last epoch to TensorBoard."""
    from ban.viz.curves import plot_learning_curves  # matplotlib: loaded only once a run reports

    write_metrics(run_dir / METRICS_FILE, history)
    plot_learning_curves(history, run_dir / CURVES_FILE)
    log_tensorboard(run_dir, history[-1])


def report_resumed(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """On resuming a run with ``history`` [one record per finished epoch]: :func:`report_epoch` if metrics.jsonl
    misses its last epoch (a kill between the checkpoint and the report), else the learning curves if they are
    missing (a report that could not draw them) — TensorBoard, which appends, gets each epoch once."""
    from ban.viz.curves import plot_learning_curves

    path = run_dir / METRICS_FILE
    written = path.read_bytes().count(b"\n") if path.is_file() else 0  # lines counted, not decoded: any bytes do
    if written < len(history):
        report_epoch(run_dir, history)
    elif not (run_dir / CURVES_FILE).exists():
        plot_learning_curves(history, run_dir / CURVES_FILE)


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
    write_file(path, text)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric values of an epoch record, nested ones as ``val/<name>``."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in scalars(value).items()})
        elif is_number(value):
            flat[key] = float(value)
    return flat


def log_tensorboard(run_dir: Path, record: dict[str, Any]) -> None:
    """Append the epoch's scalars to a TensorBoard log in ``run_dir/tensorboard`` when TensorBoard is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    directory = make_directory(run_dir / TENSORBOARD_DIR)  # a file in its place: a DataError naming it
    try:
        with SummaryWriter(str(directory)) as writer:
            for key, value in scalars(record).items():
                if key != "epoch":
                    writer.add_scalar(key, value, int(record["epoch"]))
    except OSError as error:
        raise unwritable(directory, error) from error

"""Helpers shared by the pictures: a figure that needs no display, an atomic PNG write, and running the model
for a picture (eval mode, no gradients)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from ban.data.atomic import write_with

DPI = 90


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` × ``height`` inches, outside pyplot (rendered by Agg, no display)."""
    return Figure(figsize=(width, height), dpi=DPI)


def save_png(figure: Figure, path: str | Path, bbox_inches: str | None = None, dpi: int = DPI) -> Path:
    """Write ``figure`` to ``path`` as PNG atomically (temp file + rename) at ``dpi``; ``bbox_inches="tight"``
    crops it to what is drawn (legends beside the axes included); returns the path."""
    path = Path(path)
    write_with(path, lambda temp: figure.savefig(temp, format="png", dpi=dpi, bbox_inches=bbox_inches))
    return path


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode without gradients, then restore its training mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)

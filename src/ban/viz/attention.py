"""The attention picture of one VQA question: per glimpse, the image with its boxes drawn with an opacity
set by the attention they got, and the heatmap of the bilinear attention map (question tokens × boxes).

The plotted numbers are the model's: ``heatmaps(attention)[g]`` is ``attention[g].T`` (tokens × boxes) and
``box_weights(attention)[g]`` its sum over the tokens (the attention mass of each box in glimpse g).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from ban.metrics.vqa import compared_answers
from ban.viz.boxes import draw_weighted_boxes, enlarged
from ban.viz.figures import new_figure


@dataclass
class AttentionExample:
    """Everything one attention picture shows.

    ``attention`` ``[G, N, L]``: the model's attention of this sample restricted to its N real boxes;
    ``boxes`` ``[N, 4]`` normalised x1, y1, x2, y2; ``words`` the L token labels (one ``(question)`` label for
    the unitary baseline, whose attention has L = 1); ``image`` the picture (or a blank canvas of its size when
    ``image_found`` is False).
    """

    question_id: int
    image_id: int
    question: str
    words: list[str]
    attention: np.ndarray
    boxes: np.ndarray
    predicted: str
    answers: list[str]
    image: Image.Image
    image_found: bool


def heatmaps(attention: np.ndarray) -> np.ndarray:
    """``[G, N, L]`` → the plotted maps ``[G, L, N]`` (rows: question tokens, columns: boxes)."""
    return np.transpose(np.asarray(attention), (0, 2, 1))


def box_weights(attention: np.ndarray) -> np.ndarray:
    """``[G, N, L]`` → ``[G, N]``: each box's attention summed over the tokens (its marginal per glimpse)."""
    return np.asarray(attention).sum(axis=2)


def answer_summary(answers: Sequence[str]) -> str:
    """Ground-truth answers with their annotator counts, most frequent first, as the official metric compares them
    (``"0"`` and ``"0."`` count together when the annotators disagree): ``"2 (×7), 3 (×3)"``."""
    if not answers:
        return "(no annotations for this split)"
    return ", ".join(f"{answer} (×{count})" for answer, count in Counter(compared_answers(answers)).most_common())


def weight_scale(weights: np.ndarray) -> str:
    """The scale of a box picture, for its title: the range of the box weights ``[N]`` (N ≥ 1) and their even
    share (the mean, 1/N), at and below which a box is drawn faintest (see ``ban.viz.boxes.box_opacities``)."""
    weights = np.asarray(weights, dtype=np.float64)
    return f"weights {weights.min():.3g}–{weights.max():.3g}, even share {weights.mean():.3g}"


def _tick_step(count: int, room: int = 40) -> int:
    return max(1, int(np.ceil(count / room)))


def attention_figure(example: AttentionExample) -> Figure:
    """One row per glimpse: [image with attended boxes | heatmap tokens × boxes]; title: question, prediction
    and ground truth."""
    maps = heatmaps(example.attention)
    weights = box_weights(example.attention)
    glimpses, num_words, num_boxes = maps.shape
    height = 1.4 + 4.2 * glimpses  # inches: 1.4 for the title and the bottom axis label
    figure = new_figure(13.0, height)
    grid = figure.add_gridspec(glimpses, 2, width_ratios=[1.0, 1.5], hspace=0.45, wspace=0.12,
                               top=1 - 1.0 / height, bottom=0.5 / height)
    labels = [str(i) for i in range(num_boxes)]
    for glimpse in range(glimpses):
        picture = figure.add_subplot(grid[glimpse, 0])
        drawn = draw_weighted_boxes(enlarged(example.image), example.boxes, weights[glimpse], labels=labels)
        picture.imshow(np.asarray(drawn))
        picture.set_xticks([])
        picture.set_yticks([])
        canvas = "" if example.image_found else " (no matching image file: blank canvas of its size)"
        picture.set_title(f"glimpse {glimpse + 1}: attention per box{canvas}\n"
                          f"({weight_scale(weights[glimpse])}; opacity: weight above the even share)", fontsize=9)
        heat = figure.add_subplot(grid[glimpse, 1])
        shown = heat.imshow(maps[glimpse], aspect="auto", cmap="viridis", interpolation="nearest")
        step = _tick_step(num_boxes)
        heat.set_xticks(range(0, num_boxes, step), labels[::step], fontsize=7)
        heat.set_yticks(range(num_words), example.words, fontsize=8)
        heat.set_xlabel("box", fontsize=8)
        heat.set_title(f"glimpse {glimpse + 1}: attention map (tokens × boxes)", fontsize=9)
        figure.colorbar(shown, ax=heat, fraction=0.04, pad=0.02)
    figure.suptitle(f"Q{example.question_id} (image {example.image_id}): {example.question}\n"
                    f"predicted: {example.predicted}    ground truth: {answer_summary(example.answers)}",
                    fontsize=11)
    return figure

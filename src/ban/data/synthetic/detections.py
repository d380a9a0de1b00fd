"""Detector-like boxes for a scene: one box per object, noisy duplicates, partial boxes and background boxes.

A real bottom-up detector returns several overlapping boxes for one object (the counting module's
deduplication exists for that), boxes that cover only part of an object, and boxes on background. These are
the four kinds produced here, in a random order: 10–36 boxes per image by default (:data:`UNIFORM_COUNTS`), or as
many as bottom-up features keep (:data:`BOTTOM_UP_COUNTS`: 10–100, mean ≈ 31, mostly more background boxes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ban.data.boxes import bottom_up_box_counts, box_iou
from ban.data.synthetic.scenes import Scene

OBJECT, DUPLICATE, PARTIAL, BACKGROUND = 0, 1, 2, 3
KIND_NAMES: tuple[str, ...] = ("object", "duplicate", "partial", "background")
MIN_BOXES, MAX_BOXES = 10, 36
UNIFORM_COUNTS, BOTTOM_UP_COUNTS = "10-36", "bottom-up"
BOX_COUNTS: tuple[str, ...] = (UNIFORM_COUNTS, BOTTOM_UP_COUNTS)

DUPLICATE_PROBABILITIES: tuple[float, ...] = (0.4, 0.35, 0.25)  # P(0, 1, 2 duplicates) per object
PARTIAL_PROBABILITY = 0.4
OBJECT_JITTER = 0.04  # box-coordinate noise, as a fraction of the object's size
DUPLICATE_JITTER = 0.12
MIN_SIDE = 2.0  # pixels


@dataclass(frozen=True)
class Detections:
    """Boxes of one image.

    Attributes:
        boxes: `[N, 4]` float32 x1, y1, x2, y2 in pixels, inside the image, each side ≥ 2 pixels.
        source: `[N]` int64 index of the object a box belongs to, −1 for background boxes.
        kind: `[N]` int64 one of OBJECT, DUPLICATE, PARTIAL, BACKGROUND.
    """

    boxes: np.ndarray
    source: np.ndarray
    kind: np.ndarray


def _jitter(rng: np.random.Generator, boxes: np.ndarray, scale: float) -> np.ndarray:
    """Move each coordinate of `[n, 4]` boxes by Gaussian noise of `scale` × the box's width/height."""
    size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    return boxes + rng.normal(0.0, scale, size=boxes.shape) * size


def _partial(rng: np.random.Generator, boxes: np.ndarray) -> np.ndarray:
    """A box covering 40–60 % of each `[n, 4]` box: its left, right, top or bottom part."""
    side = rng.integers(4, size=len(boxes))
    fraction = rng.uniform(0.4, 0.6, size=len(boxes))
    out = boxes.copy()
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    out[side == 0, 2] = boxes[side == 0, 0] + fraction[side == 0] * width[side == 0]
    out[side == 1, 0] = boxes[side == 1, 2] - fraction[side == 1] * width[side == 1]
    out[side == 2, 3] = boxes[side == 2, 1] + fraction[side == 2] * height[side == 2]
    out[side == 3, 1] = boxes[side == 3, 3] - fraction[side == 3] * height[side == 3]
    return out


def _background(rng: np.random.Generator, scene: Scene, count: int) -> np.ndarray:
    """`[count, 4]` boxes of 15–45 % of the image side, preferring places that overlap no object."""
    candidates = 4 * count
    size = rng.uniform(0.15, 0.45, size=(candidates, 2)) * [scene.width, scene.height]
    corner = rng.uniform(0.0, 1.0, size=(candidates, 2)) * ([scene.width, scene.height] - size)
    boxes = np.concatenate([corner, corner + size], axis=1)
    overlap = box_iou(boxes, scene.boxes).max(axis=1)
    order = np.argsort(overlap, kind="stable")
    return boxes[np.sort(order[:count])]


def _finish(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip `[n, 4]` boxes to the image and make every side at least MIN_SIDE pixels."""
    x1 = np.clip(boxes[:, 0], 0.0, width - 1 - MIN_SIDE)
    y1 = np.clip(boxes[:, 1], 0.0, height - 1 - MIN_SIDE)
    x2 = np.clip(boxes[:, 2], x1 + MIN_SIDE, width - 1)
    y2 = np.clip(boxes[:, 3], y1 + MIN_SIDE, height - 1)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)


def sample_detections(rng: np.random.Generator, scene: Scene, counts: str = UNIFORM_COUNTS) -> Detections:
    """Sample detector boxes for `scene` (object, duplicate, partial and background boxes, shuffled).

    ``counts``: :data:`UNIFORM_COUNTS`, 10–36 boxes, at least one background box below 36; or
    :data:`BOTTOM_UP_COUNTS`, a count drawn by :func:`ban.data.boxes.bottom_up_box_counts` (raised to the scene's
    object count where it is lower), which random duplicates and partial boxes are dropped to fit and background
    boxes fill. Every object keeps its own box either way.
    """
    if counts not in BOX_COUNTS:
        raise ValueError(f"counts must be one of {BOX_COUNTS}, got {counts!r}")
    n = scene.num_objects
    bottom_up = counts == BOTTOM_UP_COUNTS
    most = max(n, int(bottom_up_box_counts(rng.random()))) if bottom_up else MAX_BOXES
    objects = np.arange(n)
    duplicates = rng.choice(len(DUPLICATE_PROBABILITIES), size=n, p=DUPLICATE_PROBABILITIES)
    duplicate_source = np.repeat(objects, duplicates)
    partial_source = objects[rng.random(n) < PARTIAL_PROBABILITY]
    extra_source = np.concatenate([duplicate_source, partial_source])
    extra_kind = np.concatenate([np.full(len(duplicate_source), DUPLICATE), np.full(len(partial_source), PARTIAL)])
    if n + len(extra_source) > most:  # keep every object's own box, drop random extras
        keep = np.sort(rng.permutation(len(extra_source))[: most - n])
        extra_source, extra_kind = extra_source[keep], extra_kind[keep]
    foreground = n + len(extra_source)
    if bottom_up:
        total = most  # ≥ foreground: the extras were dropped to fit
    elif foreground < MAX_BOXES:
        total = int(rng.integers(max(MIN_BOXES, foreground + 1), MAX_BOXES + 1))
    else:
        total = foreground
    is_duplicate = extra_kind == DUPLICATE
    extra_boxes = np.empty((len(extra_source), 4))
    extra_boxes[is_duplicate] = _jitter(rng, scene.boxes[extra_source[is_duplicate]], DUPLICATE_JITTER)
    extra_boxes[~is_duplicate] = _partial(rng, scene.boxes[extra_source[~is_duplicate]])
    boxes = np.concatenate(
        [_jitter(rng, scene.boxes, OBJECT_JITTER), extra_boxes, _background(rng, scene, total - foreground)]
    )
    source = np.concatenate([objects, extra_source, np.full(total - foreground, -1)]).astype(np.int64)
    kind = np.concatenate([np.full(n, OBJECT), extra_kind, np.full(total - foreground, BACKGROUND)])
    order = rng.permutation(total)
    return Detections(
        boxes=_finish(boxes, scene.width, scene.height)[order],
        source=source[order],
        kind=kind.astype(np.int64)[order],
    )

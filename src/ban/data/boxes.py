"""Box geometry on NumPy arrays (x1, y1, x2, y2), shared by the grounding preparation and the synthetic scenes, and
how many boxes a bottom-up detector keeps per image (the law `ban bench` and `ban synth --boxes bottom-up` draw)."""

from __future__ import annotations

import numpy as np


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of every box of ``first`` ``[A, 4]`` with every box of ``second`` ``[B, 4]`` → ``[A, B]``, in the
    inputs' dtype: ``intersection / (area_first + area_second − intersection)``, as the Flickr30k reference
    computes it (no epsilon, so an overlap of exactly 0.5 is one); 0 where the union is empty (two boxes without
    area, where the reference divides by zero).

    >>> box_iou(np.array([[0., 0, 10, 10]]), np.array([[0., 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])).round(4)
    array([[1.    , 0.3333, 0.    ]])
    """
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_first = np.prod(first[:, 2:] - first[:, :2], axis=1)
    area_second = np.prod(second[:, 2:] - second[:, :2], axis=1)
    union = area_first[:, None] + area_second[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


BOTTOM_UP_MIN_BOXES, BOTTOM_UP_MAX_BOXES = 10, 100
BOTTOM_UP_EXTRA_BOXES = 22.0  # the mean of the exponential number of boxes drawn beyond the minimum


def bottom_up_box_counts(uniform: np.ndarray) -> np.ndarray:
    """Box counts like bottom-up attention's adaptive features (10–100 boxes per image, about 32 on average; this
    law's mean is 31.2): ``10 + ⌊E⌋`` for an exponential ``E`` of mean 22, clipped at 100, by inverting uniform
    numbers in [0, 1). uniform [...] float → counts [...] int64.

    >>> bottom_up_box_counts(np.array([0.0, 0.5, 0.9, 0.999]))
    array([ 10,  25,  60, 100])
    """
    counts = BOTTOM_UP_MIN_BOXES + np.floor(-np.log1p(-uniform) * BOTTOM_UP_EXTRA_BOXES)
    return np.minimum(counts, BOTTOM_UP_MAX_BOXES).astype(np.int64)

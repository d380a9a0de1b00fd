"""Box geometry on NumPy arrays (x1, y1, x2, y2), shared by the grounding preparation and the synthetic scenes."""

from __future__ import annotations

import numpy as np


def box_iou(first: np.ndarray, second: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """IoU of every box of ``first`` ``[A, 4]`` with every box of ``second`` ``[B, 4]`` → ``[A, B]``, in the
    inputs' dtype: ``intersection / (area_first + area_second − intersection + eps)`` (the Flickr30k reference
    adds ``eps = 1e-6``).

    >>> box_iou(np.array([[0., 0, 10, 10]]), np.array([[0., 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])).round(4)
    array([[1.    , 0.3333, 0.    ]])
    """
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_first = np.prod(first[:, 2:] - first[:, :2], axis=1)
    area_second = np.prod(second[:, 2:] - second[:, :2], axis=1)
    return intersection / (area_first[:, None] + area_second[None, :] - intersection + eps)

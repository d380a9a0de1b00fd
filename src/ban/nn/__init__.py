"""Reusable layers with the paper's math (PAPER.md §1–2)."""

from ban.nn.bilinear import (
    BilinearAttentionMap,
    BilinearAttentionPooling,
    LowRankBilinearPooling,
    box_mask_from_features,
)
from ban.nn.counting import CountingModule, PiecewiseLinear, pairwise_iou
from ban.nn.fc import Classifier, FCStack, WeightNormLinear
from ban.nn.unitary import UnitaryAttention

__all__ = [
    "BilinearAttentionMap",
    "BilinearAttentionPooling",
    "Classifier",
    "CountingModule",
    "FCStack",
    "LowRankBilinearPooling",
    "PiecewiseLinear",
    "UnitaryAttention",
    "WeightNormLinear",
    "box_mask_from_features",
    "pairwise_iou",
]

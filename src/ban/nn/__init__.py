"""Reusable layers with the paper's math (Kim, Jun & Zhang, NeurIPS 2018, arXiv 1805.07932)."""

from ban.nn.bilinear import (
    BilinearAttentionMap,
    BilinearAttentionPooling,
    LowRankBilinearPooling,
    PackedBoxes,
    box_mask_from_features,
    real_box_rows,
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
    "PackedBoxes",
    "PiecewiseLinear",
    "UnitaryAttention",
    "WeightNormLinear",
    "box_mask_from_features",
    "pairwise_iou",
    "real_box_rows",
]

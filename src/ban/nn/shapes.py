"""Checks of a layer's or a model's inputs against the shapes its docstring gives, so that a wrong argument fails
with its name and both shapes, not inside a matrix product or as a silently broadcast mask. Shapes and dtypes
only, never values: nothing waits for the device."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

KINDS = {"float": torch.is_floating_point, "bool": lambda t: t.dtype == torch.bool,
         "integer": lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool}


def expect_shape(name: str, tensor: Tensor, shape: Sequence[int | None], kind: str) -> None:
    """Raise ValueError unless ``tensor`` has ``len(shape)`` dimensions of the given sizes (None: any size) and a
    dtype of ``kind`` ("float", "bool" or "integer")."""
    fits = tensor.dim() == len(shape) and all(want is None or have == want
                                              for have, want in zip(tensor.shape, shape, strict=True))
    if not (fits and KINDS[kind](tensor)):
        wanted = ", ".join("·" if size is None else str(size) for size in shape)
        raise ValueError(f"{name}: expected shape [{wanted}] (· any size) with {kind} values, "
                         f"got shape {list(tensor.shape)} of {tensor.dtype}")

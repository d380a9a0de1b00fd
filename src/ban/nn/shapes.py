"""Checks of a layer's or a model's inputs against the shapes its docstring gives, so that a wrong argument fails
with its name and both shapes, not inside a matrix product or as a silently broadcast mask. Shapes and dtypes
only, never values: nothing waits for the device."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ban.nn.amp import autocast_enabled

KINDS = {"float": torch.is_floating_point, "bool": lambda t: t.dtype == torch.bool,
         "index": lambda t: t.dtype in (torch.int64, torch.int32), "int64": lambda t: t.dtype == torch.int64}


def expect_shape(name: str, tensor: Tensor, shape: Sequence[int | None], kind: str) -> None:
    """Raise ValueError unless ``tensor`` has ``len(shape)`` dimensions of the given sizes (None: any size) and a
    dtype of ``kind``: "float", "bool", "index" (int64 or int32: what an embedding looks up) or "int64" (what a
    gather takes)."""
    fits = tensor.dim() == len(shape) and all(want is None or have == want
                                              for have, want in zip(tensor.shape, shape, strict=True))
    if not (fits and KINDS[kind](tensor)):
        wanted = ", ".join("·" if size is None else str(size) for size in shape)
        legend = " (· any size)" if None in shape else ""
        raise ValueError(f"{name}: expected shape [{wanted}]{legend} with {kind} values, "
                         f"got shape {list(tensor.shape)} of {tensor.dtype}")


def expect_features(name: str, tensor: Tensor, width: int) -> None:
    """Raise ValueError unless ``tensor`` is [..., width] (any leading dimensions) with float values."""
    if tensor.dim() == 0 or tensor.shape[-1] != width or not tensor.is_floating_point():
        raise ValueError(f"{name}: expected shape [..., {width}] with float values, got shape {list(tensor.shape)} "
                         f"of {tensor.dtype}")


def expect_dtype_fits(name: str, tensor: Tensor, weight_dtype: torch.dtype) -> None:
    """Raise ValueError unless the float ``tensor`` can meet weights of ``weight_dtype`` in a matrix product: the
    same dtype, or any but float64 under autocast on the tensor's device (autocast casts both)."""
    autocast = autocast_enabled(tensor.device.type)
    if tensor.dtype != weight_dtype and not (autocast and torch.float64 not in (tensor.dtype, weight_dtype)):
        raise ValueError(f"{name}: {tensor.dtype} values meet {weight_dtype} weights; cast the input "
                         f"(.to({weight_dtype})) or the module")


def expect_positive(name: str, size: int) -> None:
    """Raise ValueError unless ``size`` (a count of glimpses, …) is at least 1."""
    if size < 1:
        raise ValueError(f"{name} must be positive, got {size}")

"""The precision a run computes in: ``"auto"`` resolved for a device, and the autocast context of each."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` → ``"bf16"`` on a CPU or a CUDA device with bf16 support, else ``"fp32"``."""
    if precision != "auto":
        return precision
    if device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str, cast_cache: bool = True) -> Any:
    """The autocast context of ``precision`` ("bf16" or "fp32") on ``device``. ``cast_cache=False`` turns off
    autocast's cache of weight casts, which a captured CUDA graph would reuse stale."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cast_cache)
    return nullcontext()

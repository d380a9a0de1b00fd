"""Autocast queries that also hold on a device without autocast, such as ``meta`` (where a model's output shapes are
worked out without data): there, autocast is simply off."""

from __future__ import annotations

import contextlib

import torch


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ("cpu", "cuda", …); False where the device has none."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A block in which autocast is off on ``device_type``: ``torch.autocast(device_type, enabled=False)``, or
    nothing to do on a device without autocast."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()

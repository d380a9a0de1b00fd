"""Where a measurement ran: the line every benchmark and ablation records with its numbers."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device | None = None) -> str:
    """CPU model, core count, torch threads and version, and the CUDA card when ``device`` is one (or, with no
    device given, when one is present)."""
    text = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    use_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if use_cuda:
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text

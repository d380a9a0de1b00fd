"""What ``torchrun`` tells a process through its environment (read without importing torch, so that the CLI can
ask before any command loads); a process not started by torchrun reads as the only one."""

from __future__ import annotations

import os


def world_size() -> int:
    """How many processes the launch started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this is the launch's rank-0 process (``RANK``), the one that speaks and writes for all."""
    return int(os.environ.get("RANK", "0")) == 0


def local_rank() -> int:
    """This process's rank among those on its machine (``LOCAL_RANK``)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def spans_machines() -> bool:
    """Whether the launch has processes on more than one machine (fewer local processes than all)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size())) < world_size()

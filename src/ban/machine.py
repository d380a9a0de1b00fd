"""Which machine this is: the line every benchmark and ablation records with its numbers, and its memory."""

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


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None  # -1: the system cannot tell


def describe_machine(device: torch.device | None = None) -> str:
    """CPU model, core count, torch threads and version, and the CUDA card when ``device`` is one (or, with no
    device given, when one is present)."""
    text = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    use_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if use_cuda:
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def code_version() -> str:
    """Which code measured: ``git <commit>`` of the checkout ban runs from (read from ``.git``, no git process;
    uncommitted changes are not seen), or ``ban <version>`` outside a checkout."""
    for folder in Path(__file__).resolve().parents:
        if (folder / ".git").is_dir():
            return f"git {_head_commit(folder / '.git')}"
    from ban import __version__

    return f"ban {__version__}"


def _head_commit(git: Path) -> str:
    """The commit HEAD names in the ``.git`` directory ``git`` (first 12 hex digits), or "unknown"."""
    try:
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head.removeprefix("ref: ")
        if (git / ref).is_file():
            return (git / ref).read_text(encoding="utf-8").strip()[:12]
        for line in (git / "packed-refs").read_text(encoding="utf-8").splitlines():
            if line.endswith(f" {ref}"):
                return line.split()[0][:12]
    except OSError:
        pass
    return "unknown"

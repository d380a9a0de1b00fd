"""Compiled CPU kernels: one pass over memory where PyTorch's CPU operators make several.

The C++ sources beside this file are compiled into one extension module by PyTorch's extension loader on first
use (≈ 60–70 s on a 2-core machine, then cached per installation: :func:`build_directory`):
Adamax's update with gradient clipping's factor (``adamax.cpp``), dropout's masks drawn and applied in the same pass
(``dropout.cpp``), the counting module's piecewise-linear functions (``piecewise.cpp``) and the weight-normalised
linear map's cast, norm and gradients (``weight_norm.cpp``). Without a compiler, or when the build fails,
:func:`compiled` warns once and returns None, and every caller runs PyTorch's operators instead.

``ban train`` and ``ban bench`` use them for CPU models of at least :data:`MIN_PARAMETERS` parameters (:func:`wanted`),
where the compilation pays for itself; ``BAN_CPU_KERNELS=0`` turns them off. The layers use them only inside
:func:`enabled`, where the question encoder's GRU also runs as :func:`ban.nn.gru.gru_sequence` when training: the
dropout masks are the same either way, the weight-normalised products and the GRU differ in rounding only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ban.filelock import held

MIN_PARAMETERS = 10_000_000
_SOURCES = ("adamax.cpp", "dropout.cpp", "piecewise.cpp", "weight_norm.cpp", "bindings.cpp")
_ENABLED: ContextVar[Any] = ContextVar("ban_cpu_kernels", default=None)


@cache
def compiled() -> Any:
    """The compiled extension module, or None with a warning when it cannot be built."""
    from torch.utils.cpp_extension import load

    here = Path(__file__).parent
    directory = build_directory()
    if not any(directory.glob("*.so")):
        print(f"ban: building the CPU kernels (first use in this installation, about a minute) in {directory}",
              file=sys.stderr)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with building(directory):
            began = time.perf_counter()  # after waiting for another process's build: only a build here is timed
            module = load(name="ban_cpu_kernels", sources=[str(here / name) for name in _SOURCES],
                          extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off"], extra_ldflags=["-fopenmp"],
                          build_directory=str(directory))
    except Exception as error:  # no compiler, no ninja, a failed build: PyTorch's operators still work
        warnings.warn(f"ban's CPU kernels could not be built ({type(error).__name__}: {error}); "
                      "using PyTorch's operators", RuntimeWarning, stacklevel=2)
        return None
    if time.perf_counter() - began > 2:  # it was compiled now, not loaded from the cache
        print(f"ban: compiled the CPU kernels in {time.perf_counter() - began:.0f} s (cached for later runs)",
              file=sys.stderr)
    return module


def build_directory() -> Path:
    """Where the kernels are built and cached: one folder per Python environment, torch version and source folder
    under PyTorch's extension root (``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``), so two
    installations — or two checkouts sharing one environment — never rebuild over each other's objects."""
    from torch.utils.cpp_extension import get_default_build_root

    sources = Path(__file__).resolve().parent
    installation = hashlib.sha256(f"{sys.prefix}\0{torch.__version__}\0{sources}".encode()).hexdigest()[:12]
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / f"ban_cpu_kernels-{installation}"


@contextlib.contextmanager
def building(directory: Path) -> Iterator[None]:
    """Hold the build of ``directory`` for this process. PyTorch's own lock is a file that a build stopped by a
    signal or a crash leaves behind, and every later build then waits for it forever; this lock is the kernel's
    (:func:`ban.filelock.held`), released when its process ends, so PyTorch's file found while holding it is such
    a leftover."""
    with held(directory.parent / f"{directory.name}.lock",
              "ban: waiting for another process building the CPU kernels") as locked:
        if locked:
            (directory / "lock").unlink(missing_ok=True)
        yield


def wanted(parameters: int, device: torch.device) -> bool:
    """Whether a model of ``parameters`` parameters on ``device`` should use the kernels."""
    return device.type == "cpu" and parameters >= MIN_PARAMETERS and os.environ.get("BAN_CPU_KERNELS", "1") != "0"


@contextlib.contextmanager
def enabled(wanted: bool = True) -> Iterator[bool]:
    """Within this block the layers use the compiled kernels on CPU tensors (when ``wanted`` and they build);
    yields whether they do."""
    token = _ENABLED.set(compiled() if wanted else None)
    try:
        yield _ENABLED.get() is not None
    finally:
        _ENABLED.reset(token)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype products of ``x`` run in: the autocast dtype of ``x``'s device while autocast is on there, else
    ``x.dtype``."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def active() -> Any:
    """The kernel module inside :func:`enabled`, else None (and None while ``torch.compile`` traces: it compiles
    PyTorch's operators, not these kernels)."""
    return None if torch.compiler.is_compiling() else _ENABLED.get()

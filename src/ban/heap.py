"""Keep freed memory in the process for the next training step (glibc's malloc).

A training step frees and re-allocates the same tensors every time: activations, gradients, the optimizer's
temporaries — megabytes each. By default glibc serves blocks above a moving threshold with fresh ``mmap`` calls and
returns freed heap tops to the kernel, so each step faults its memory back in page by page (tens of thousands of
page faults per paper-best CPU step, up to 0.15 s of system time: benchmarks/RESULTS.md). :func:`keep_freed_memory`
fixes the ``mmap`` threshold at its maximum and stops the trimming, so blocks up to 32 MiB are reused from the heap.
``ban`` calls it when it starts; other glibc programs get the same with the environment variables
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # the largest threshold glibc accepts on 64-bit systems
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: trim only when 2 GiB lie free at the heap's top


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed blocks up to :data:`MMAP_THRESHOLD` bytes instead of unmapping them.

    Returns False (and changes nothing) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

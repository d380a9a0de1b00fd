"""ban.heap: freed tensors' memory is reused by the next allocation instead of being faulted in again."""

import resource
import subprocess
import sys

import pytest

# Each child first fixes glibc's mmap threshold at its initial 128 KiB (by default glibc moves it as blocks are
# freed, so whether a repeated allocation faults varies from run to run); keep_freed_memory must then undo that.
CHILD = """
import ctypes, ctypes.util, resource, sys, torch
from ban.heap import keep_freed_memory
assert ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults_of_one_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(2**20 * 3) for _ in range(8)]  # 8 blocks of 12 MiB, written
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
first = faults_of_one_round()
print(first, min(faults_of_one_round() for _ in range(3)))
"""


def page_faults(mode: str) -> tuple[int, int]:
    """(page faults of the first round, fewest of the three rounds after it) in a fresh process."""
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    first, later = out.stdout.split()[-2:]
    return int(first), int(later)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_keeping_freed_memory_stops_the_page_faults_of_repeated_allocations():
    pages = 8 * 12 * 2**20 // resource.getpagesize()
    fixed_first, fixed_later = page_faults("fixed")
    kept_first, kept_later = page_faults("keep")
    assert fixed_first > pages / 2 and kept_first > pages / 2  # fresh memory is faulted in either way
    assert fixed_later > pages / 2  # mapped afresh, faulted in again, every round
    assert kept_later < pages / 20  # the heap's freed blocks serve the next rounds

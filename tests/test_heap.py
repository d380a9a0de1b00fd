"""ban.heap: freed tensors' memory is reused by the next allocation instead of being faulted in again."""

import resource
import subprocess
import sys

import pytest

CHILD = """
import resource, sys, torch
from ban.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults_of_one_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(2**20 * 3) for _ in range(8)]  # 8 blocks of 12 MiB, written
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_round()
print(min(faults_of_one_round() for _ in range(3)))
"""


def page_faults_per_round(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_keeping_freed_memory_stops_the_page_faults_of_repeated_allocations():
    pages = 8 * 12 * 2**20 // resource.getpagesize()
    assert page_faults_per_round("default") > pages / 2  # each round maps its 96 MiB afresh
    assert page_faults_per_round("keep") < pages / 20  # the heap's freed blocks serve the next round

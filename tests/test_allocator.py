"""otclust.allocator: freed training-sized blocks are reused in memory, given back out of core."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt")

SCRIPT = """
import resource, sys, torch
from otclust import allocator
from otclust.data import ImageDataset
from otclust.data.datasets import place_for_training

def faults_of_a_loop():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        block = torch.empty(64 << 20, dtype=torch.uint8)  # above glibc's 32 MB mapping cap
        block.fill_(1)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

data = torch.zeros((4, 1, 8, 8), dtype=torch.uint8)
before = faults_of_a_loop()
place_for_training(ImageDataset(data, None, "x", out_of_core=sys.argv[1] == "out"), torch.device("cpu"))
placed = faults_of_a_loop()
allocator.hand_back_freed_blocks()
after = faults_of_a_loop()
print(before, placed, after)
"""


def _faults(mode: str) -> tuple[int, int, int]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    before, placed, after = map(int, done.stdout.split())
    return before, placed, after


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere the allocator is left alone")
def test_in_memory_training_reuses_freed_blocks_and_gives_them_back_after():
    pages = (64 << 20) // 4096
    before, placed, after = _faults("in")
    assert before > 10 * pages  # glibc maps and zero-fills each 64 MB block anew
    assert placed < 2 * pages  # in-memory training: the first block's pages, then reused
    assert after > 10 * pages  # after training: glibc's behaviour again


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere the allocator is left alone")
def test_out_of_core_keeps_giving_blocks_back():
    pages = (64 << 20) // 4096
    _, placed, after = _faults("out")
    assert placed > 10 * pages and after > 10 * pages

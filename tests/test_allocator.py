"""otclust.allocator: freed training-sized blocks are reused in memory, given back out of core."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt") and Path("/proc/self/status").exists()

SCRIPT = """
import resource, sys, torch
from otclust import allocator
from otclust.data import ImageDataset
from otclust.data.datasets import place_for_training

def faults_of_a_loop():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        block = torch.empty(64 << 20, dtype=torch.uint8)  # above glibc's 32 MB mapping cap
        block.fill_(1)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

def anon_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("RssAnon:")) // 1024

data = torch.zeros((4, 1, 8, 8), dtype=torch.uint8)
before = faults_of_a_loop()
place_for_training(ImageDataset(data, None, "x", out_of_core=sys.argv[1] == "out"), torch.device("cpu"))
placed = faults_of_a_loop()
kept = anon_mib()
allocator.hand_back_freed_blocks()
print(before, placed, kept - anon_mib())
"""


def _run(mode: str) -> tuple[int, int, int]:
    """Page faults of the loop before and after placing a set, and the MiB handed back after."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    before, placed, handed_back = map(int, done.stdout.split())
    return before, placed, handed_back


# Where glibc puts a block depends on what else the process allocated in between, so the tests
# compare against the same loop before the setting, with margins well inside what was seen
# (40 blocks in memory: 6 to 40 times fewer faults seen; out of core: the same).
@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere the allocator is left alone")
def test_in_memory_training_reuses_freed_blocks_and_hands_them_back_after():
    before, placed, handed_back = _run("in")
    assert before > 10 * (64 << 20) // 4096  # glibc maps and zero-fills each 64 MB block anew
    assert placed < before / 2
    assert handed_back >= 32  # MiB: the kept 64 MB block leaves the process's resident memory


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere the allocator is left alone")
def test_out_of_core_keeps_giving_blocks_back():
    before, placed, _ = _run("out")
    assert placed > before / 2

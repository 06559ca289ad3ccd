"""How freed CPU memory is handled while a run trains (glibc only; elsewhere nothing changes).

torch's CPU tensors come from the C library's malloc. glibc serves a block above its mmap
threshold with a fresh mapping and unmaps it when freed; the threshold follows the largest block
freed so far but stops at 32 MB. A training step on photo-sized batches (256 RGB images at 64x64:
a first activation of 34 MB, a backward pass of several such) frees blocks above that cap every
step, so every step maps them anew and the kernel zero-fills each page on first touch (what that
cost is in docs/performance.md, "Photo-sized batches"). Two settings, one per way the data are held:

- ``reuse_freed_blocks`` (the data in memory): blocks up to 1 GiB come from the heap, and freed
  space stays with the process (no trimming), so the next step reuses pages already mapped. The
  peak is what one step needs, as before; memory is not handed back between steps.
- ``return_freed_blocks`` (an out-of-core set): every block of 128 kB or more gets its own
  mapping, given back when freed. Otherwise batch-sized temporaries, freed between the small
  results kept from each batch (a prediction pass), stay pinned in the heap, which then grows by
  about the size of the set: what out of core must avoid (benchmarks/out_of_core.py).

Setting the thresholds explicitly also turns glibc's own adjustment off. After training,
``hand_back_freed_blocks`` returns what training kept and restores glibc's usual steady state.
"""

from __future__ import annotations

import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

REUSE_BELOW = 1 << 30  # blocks smaller than this come from the heap
KEEP_FREED = 2**31 - 1  # trim the heap's free top only beyond 2 GiB (mallopt takes an int)
OWN_MAPPING_FROM = 128 * 1024  # glibc's initial threshold
GLIBC_MMAP_CAP = 32 << 20  # the highest threshold glibc's own adjustment reaches (64-bit)

_out_of_core_seen = False


def _glibc(name: str):
    """A function of glibc's malloc, or None where there is none (not Linux, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return getattr(ctypes.CDLL(None), name, None)
    except OSError:
        return None


def _mallopt(setting: int, value: int) -> bool:
    mallopt = _glibc("mallopt")
    return mallopt is not None and bool(mallopt(setting, value))


def reuse_freed_blocks() -> bool:
    """In-memory training: serve blocks below 1 GiB from the heap and keep freed space. Does
    nothing once an out-of-core set has been placed in this process (its setting wins)."""
    if _out_of_core_seen:
        return False
    return _mallopt(M_MMAP_THRESHOLD, REUSE_BELOW) and _mallopt(M_TRIM_THRESHOLD, KEEP_FREED)


def hand_back_freed_blocks() -> bool:
    """After training: back to the steady state glibc itself reaches (blocks from 32 MB mapped,
    free heap top beyond 64 MB trimmed), and what training kept given back now, so that the
    read-out's peak memory is what it was before this module (keeping the training setting
    through the read-out was faster but raised that peak: docs/performance.md)."""
    if _out_of_core_seen or not _mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_CAP):
        return False
    _mallopt(M_TRIM_THRESHOLD, 2 * GLIBC_MMAP_CAP)
    malloc_trim = _glibc("malloc_trim")
    return malloc_trim is not None and bool(malloc_trim(0))


def return_freed_blocks() -> bool:
    """Out-of-core passes: give every block of 128 kB or more its own mapping, unmapped when freed."""
    global _out_of_core_seen
    _out_of_core_seen = True
    return _mallopt(M_MMAP_THRESHOLD, OWN_MAPPING_FROM)

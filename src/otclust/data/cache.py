"""The decoded-image cache: a folder's decoded uint8 array as an ``.npy`` file, memory-mapped on reuse.

Decoding thousands of photos takes minutes; ``fit``, ``predict``, ``report`` and ``compare`` on
the same folder all need the same array. The first run decodes straight into
``CACHE/KEY.npy`` (a memory-mapped file, so the set never has to fit in RAM) and writes
``CACHE/KEY.json`` beside it (which files were kept, which skipped and why); later runs map the
file instead of decoding. ``KEY`` hashes what the array depends on: every file's absolute path,
size and modification time, the working resolution and the number of channels, so changing,
adding or removing any image, or asking for another size, makes a new entry.

``CACHE`` is ``--cache-dir``, else ``$OTCLUST_CACHE``, else ``~/.cache/otclust/decoded`` (under
``$XDG_CACHE_HOME`` if set). Entries are never deleted by otclust: remove the folder to reclaim
the space. An entry is complete only once its ``.json`` exists (written last, by rename), so an
interrupted run leaves no entry a later run could mistake for a whole one, and the user's image
folder is never written to.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from otclust.data.decode import SETTINGS

# Part of every key: raised when decoding changes what it writes (2: colour profiles to sRGB, the
# range of float and 32-bit images from their 99th percentile, MPO reduced; 2026-12-06. 3: 16-bit
# images from their bit depth, 16-bit WhiteIsZero TIFFs inverted; 2026-12-07), so that a cache of
# before is not reused.
CACHE_FORMAT = "otclust-decoded-3"


def cache_root() -> Path:
    if SETTINGS.cache_dir:
        return Path(SETTINGS.cache_dir).expanduser()
    if os.environ.get("OTCLUST_CACHE"):
        return Path(os.environ["OTCLUST_CACHE"]).expanduser()
    from otclust.data.formats import cache_dir  # here: formats imports this module

    return cache_dir("decoded")


def key_for(paths: list[str], size: tuple[int, int], channels: int) -> str:
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{size[0]}x{size[1]}|{channels}".encode())
    for path in paths:
        st = os.stat(path)
        digest.update(f"|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def lookup(key: str, channels: int, size: tuple[int, int]) -> tuple[np.ndarray, dict] | None:
    """The cached array (memory-mapped, copy-on-write) and its record, or None.

    An entry that does not match what its record promises is ignored (and decoded again).
    """
    root = cache_root()
    meta_path, array_path = root / f"{key}.json", root / f"{key}.npy"
    try:
        meta = json.loads(meta_path.read_text())
        array = np.load(array_path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError):
        return None
    expected = (len(meta.get("kept", [])), channels, *size)
    if meta.get("format") != CACHE_FORMAT or array.dtype != np.uint8 or array.shape != expected:
        return None
    return array, meta


def free_space(root: Path) -> int:
    probe = root
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return 0


class Entry:
    """A cache entry being written: ``array`` is the memory-mapped destination of the decoder."""

    def __init__(self, key: str, shape: tuple[int, ...]):
        self.root = cache_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.tmp = self.root / f"{key}.npy.part-{os.getpid()}"
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.uint8, shape=shape)

    def drop_rows(self, failed: set[int]) -> None:
        """Rewrite the entry without the rows whose file failed to decode (chunk by chunk)."""
        keep = np.array([i for i in range(len(self.array)) if i not in failed], dtype=np.int64)
        tmp = self.root / f"{self.key}.npy.part2-{os.getpid()}"
        smaller = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(keep), *self.array.shape[1:]))
        for start in range(0, len(keep), 256):
            smaller[start : start + 256] = self.array[keep[start : start + 256]]
        smaller.flush()
        del self.array
        os.replace(tmp, self.tmp)
        self.array = smaller

    def commit(self, meta: dict) -> np.ndarray:
        """Make the entry visible; returns the array mapped from its final place."""
        self.array.flush()
        del self.array
        final = self.root / f"{self.key}.npy"
        os.replace(self.tmp, final)
        meta_tmp = self.root / f"{self.key}.json.part-{os.getpid()}"
        meta_tmp.write_text(json.dumps({"format": CACHE_FORMAT, **meta}))
        os.replace(meta_tmp, self.root / f"{self.key}.json")
        return np.load(final, mmap_mode="c", allow_pickle=False)

    def abandon(self) -> None:
        self.__dict__.pop("array", None)
        for path in self.root.glob(f"{self.key}.npy.part*-{os.getpid()}"):
            path.unlink(missing_ok=True)


__all__ = ["cache_root", "key_for", "lookup", "Entry", "free_space", "CACHE_FORMAT"]

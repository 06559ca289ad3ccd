"""Tiny data sets written in the exact on-disk formats the benchmarks ship in.

Shared by the loader tests (tests/data/test_datasets.py) and the GPU-recipe checks
(tests/test_gpu_recipes.py): idx files (MNIST, Fashion-MNIST), the CIFAR-10 / CIFAR-100 python
pickles, the STL-10 binary files, and a folder of JPEGs in class subfolders (ImageNet-10 as users
unpack it). Imported as a plain module: pytest puts tests/ on sys.path, since conftest.py lives there.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

from otclust.data import formats

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def idx_bytes(array: np.ndarray) -> bytes:
    """idx: 0x0000, type 0x08 (ubyte), ndim, big-endian dims, then the data row-major."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def pattern_images(n: int, h: int, w: int, offset: int = 0) -> np.ndarray:
    """Images whose every pixel is distinct from its transpose position: pixel = 7i + 3r + c."""
    i, r, c = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    return ((offset + 7 * i + 3 * r + c) % 256).astype(np.uint8)


def write_idx_dir(directory: Path, n_train=3, n_test=2, h=4, w=5, gz=True) -> tuple[np.ndarray, np.ndarray]:
    import gzip

    directory.mkdir(parents=True, exist_ok=True)
    train, test = pattern_images(n_train, h, w), pattern_images(n_test, h, w, offset=100)
    files = {
        "train-images-idx3-ubyte": idx_bytes(train),
        "train-labels-idx1-ubyte": idx_bytes(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte": idx_bytes(test),
        "t10k-labels-idx1-ubyte": idx_bytes((np.arange(n_test) + 5) % 10),
    }
    for name, content in files.items():
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (directory / name).write_bytes(content)
    return train, test


def cifar_pickle(obj: dict, path: Path) -> None:
    """Protocol 2 with bytes keys and the numpy.core module name, as the original Python 2 files."""
    raw = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(raw)


def cifar_rows(n: int, offset: int) -> np.ndarray:
    """N x 3072 rows: 1024 red, 1024 green, 1024 blue values, each plane row-major 32 x 32."""
    return pattern_images(n * 3, 32, 32, offset).reshape(n, 3072)


def write_cifar10(root: Path, per_batch: int = 2, n_test: int = 1) -> Path:
    """cifar-10-batches-py/ under root: data_batch_1..5 with `per_batch` images each (labels
    b, b+1, ... mod 10 in batch b), test_batch with `n_test` (labels 9, 0, 1, ...), batches.meta."""
    batches = root / formats.CIFAR10_DIR
    batches.mkdir(parents=True)
    for b in range(1, 6):
        cifar_pickle(
            {b"batch_label": b"training batch", b"labels": [(b + i) % 10 for i in range(per_batch)],
             b"data": cifar_rows(per_batch, 10 * b), b"filenames": [f"{b}_{i}.png".encode() for i in range(per_batch)]},
            batches / f"data_batch_{b}",
        )  # fmt: skip
    test_labels = [(9 + i) % 10 for i in range(n_test)]
    cifar_pickle({b"labels": test_labels, b"data": cifar_rows(n_test, 200), b"filenames": [b"t.png"] * n_test}, batches / "test_batch")
    cifar_pickle({b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": 10000, b"num_vis": 3072}, batches / "batches.meta")
    return batches


def write_cifar100(root: Path, train_coarse, test_coarse) -> Path:
    """cifar-100-python/ under root: train and test with one image per given superclass label
    (fine labels derived from them), and meta with 20 superclass names super0..super19."""
    d = root / formats.CIFAR100_DIR
    d.mkdir(parents=True)
    for part, coarse, offset in (("train", list(train_coarse), 0), ("test", list(test_coarse), 9)):
        fine = [(5 * c + i) % 100 for i, c in enumerate(coarse)]
        cifar_pickle({b"data": cifar_rows(len(coarse), offset), b"fine_labels": fine, b"coarse_labels": coarse}, d / part)
    coarse_names = [f"super{i}".encode() for i in range(20)]
    cifar_pickle({b"fine_label_names": [b"f"] * 100, b"coarse_label_names": coarse_names}, d / "meta")
    return d


def write_stl10(root: Path, train_labels=(1, 10), test_labels=(4,), n_unlabeled: int = 2) -> dict[str, np.ndarray]:
    """STL-10 binary under root/stl10_binary: each image 3 x 96 x 96 stored column-major, labels
    1..10 as bytes; returns the images of each part as N x 3 x 96 x 96 (row-major)."""
    d = root / formats.STL10_DIR
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    counts = (("train", len(train_labels)), ("test", len(test_labels)), ("unlabeled", n_unlabeled))
    images = {part: rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8) for part, n in counts}
    for part, img in images.items():
        (d / f"{part}_X.bin").write_bytes(np.ascontiguousarray(img.transpose(0, 1, 3, 2)).tobytes())
    (d / "train_y.bin").write_bytes(bytes(train_labels))
    (d / "test_y.bin").write_bytes(bytes(test_labels))
    (d / "class_names.txt").write_text("\n".join(formats.STL10_CLASSES) + "\n")
    return images


def write_jpeg_class_folders(root: Path, n_classes: int = 10, per_class: int = 4, size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """An ImageNet-style folder: one subfolder per class (named like WordNet ids), RGB JPEGs of
    `size` (height, width) inside, each class a different mean colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n_classes):
        folder = root / f"n{k:08d}"
        folder.mkdir()
        colour = rng.integers(30, 226, 3)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 25, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"n{k:08d}_{i}.JPEG", quality=90)
    return root

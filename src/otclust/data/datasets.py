"""Datasets as one in-memory type, named on the command line as ``--data NAME[:PATH]``.

Clustering methods need the whole dataset at once (pseudo-labels are solved over all samples),
and the benchmarks fit in memory, so a dataset is simply a uint8 image tensor (or a float
feature matrix) with optional ground-truth labels. Labels are used only for evaluation; a
dataset without them can still be clustered, and ``notes`` tells the user why no scores appear.

Spec syntax (``load_dataset(spec, ...)``)::

    digits                          scikit-learn's bundled 8x8 digits (1797 images, no split)
    mnist[:DIR]                     idx files (.gz or not) in DIR, or a previous --download
    fashion-mnist[:DIR]             idx files; default /usr/share/datasets/fashion-mnist
                                    (Debian: sudo apt-get install dataset-fashion-mnist)
    cifar10[:DIR]                   python pickles; DIR = cifar-10-batches-py or its parent
    cifar100-20[:DIR]               CIFAR-100 with its 20 superclasses as labels
    stl10[:DIR]                     binary format; DIR = stl10_binary or its parent
    folder:PATH                     images in class subfolders (labels), or flat (no labels)
    features:PATH.npy[,labels=L.npy]  N x D matrix; labels default to PATH.labels.npy if present

Splits: ``all`` (train then test, joined: the usual clustering protocol), ``train``, ``test``,
for STL-10 also ``unlabeled``; parts may be joined with ``+`` (``train+unlabeled``). A split
containing unlabeled images has no labels. ``digits``, ``folder`` and ``features`` have a single
part, so ``all`` and ``train`` give everything and ``test`` is an error.

Without a DIR, datasets are looked for in ``~/.cache/otclust/NAME`` (where ``download=True``
puts them); the network is used only when ``download=True``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from otclust import allocator
from otclust.data import decode, formats
from otclust.data.formats import Part
from otclust.errors import UserError

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------------------
# The dataset type
# --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class ImageDataset:
    """A whole dataset in memory.

    ``data`` is uint8 ``N x C x H x W`` (C = 1 or 3) for images, kept as bytes so that 70k
    Fashion-MNIST or 60k CIFAR images cost tens of MB and batches are converted to float on the
    device that trains; or float32 ``N x D`` for precomputed feature vectors.
    """

    data: torch.Tensor
    labels: np.ndarray | None
    name: str
    paths: list[str] | None = None
    class_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    split: str = "all"
    # data is a memory-mapped file larger than the memory budget: the engine keeps it where it
    # is and moves one batch at a time to the device (``place_for_training``).
    out_of_core: bool = False

    def __post_init__(self) -> None:
        # Programmer errors (not UserError): loaders always build valid datasets.
        if not isinstance(self.data, torch.Tensor):
            raise TypeError(f"data must be a torch.Tensor, not {type(self.data).__name__}")
        if self.data.dtype == torch.uint8:
            if self.data.dim() != 4 or self.data.shape[1] not in (1, 3):
                raise ValueError(f"image data must be uint8 N x C x H x W, C in (1, 3), got {tuple(self.data.shape)}")
        elif self.data.is_floating_point() and self.data.dim() == 2:
            if self.data.dtype != torch.float32:
                self.data = self.data.float()
        else:
            raise ValueError(
                f"data must be uint8 N x C x H x W or float N x D, got {self.data.dtype} {tuple(self.data.shape)}"
            )
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != (self.n_samples,):
                raise ValueError(f"labels shape {self.labels.shape} does not match {self.n_samples} samples")
        if self.paths is not None and len(self.paths) != self.n_samples:
            raise ValueError(f"{len(self.paths)} paths for {self.n_samples} samples")

    @property
    def is_features(self) -> bool:
        return self.data.dim() == 2 and self.data.is_floating_point()

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def channels(self) -> int | None:
        return None if self.is_features else int(self.data.shape[1])

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width), the convention of ``conform`` and the augmentation code."""
        return None if self.is_features else (int(self.data.shape[2]), int(self.data.shape[3]))

    @property
    def n_classes(self) -> int | None:
        """Number of ground-truth classes (from class names if known, else from the labels)."""
        if self.labels is None:
            return None
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.data.shape)
        labels = "unlabeled" if self.labels is None else f"{self.n_classes} classes"
        dtype = str(self.data.dtype).replace("torch.", "")
        return f"ImageDataset({self.name!r}, split={self.split!r}, {shape} {dtype}, {labels})"

    def subset(self, indices) -> "ImageDataset":
        """The samples at ``indices`` (ints, a boolean mask, numpy or torch), in that order."""
        idx = indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (self.n_samples,):
                raise IndexError(f"boolean mask of shape {idx.shape} for {self.n_samples} samples")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif idx.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers or a boolean mask, not {idx.dtype}")
        idx = idx.astype(np.int64).reshape(-1)
        return ImageDataset(
            data=self.data[torch.from_numpy(idx)],  # a copy in memory, even of an out-of-core set
            labels=None if self.labels is None else self.labels[idx],
            name=self.name,
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            class_names=None if self.class_names is None else list(self.class_names),
            notes=list(self.notes),
            split=self.split,
        )


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """How to find and read one named dataset.

    ``locate`` turns the optional user path into the directory to read (downloading only when
    asked); ``read`` reads one part from there. Splitting the two lets the directory search,
    its error message and the download happen once for a split made of several parts.
    """

    name: str
    usage: str
    summary: str
    parts: tuple[str, ...]
    all_parts: tuple[str, ...]
    path: str  # "none", "optional" or "required"
    locate: Callable[[Path | None, tuple[str, ...], bool], Path | None]
    read: Callable[[Path | None, str, tuple[int, int] | None, dict], Part]


def _dir_locator(
    name: str,
    find: Callable[[Path, tuple[str, ...]], Path | None],
    missing: Callable[[Path, tuple[str, ...]], str],
    hint: str,
    default_dirs: tuple[Path, ...] = (),
) -> Callable[[Path | None, tuple[str, ...], bool], Path]:
    """Locator for datasets that live in a directory of standard files.

    Looks in the user's DIR, else in the default directories and the download cache; unpacks the
    official archive if it sits there unextracted; downloads only when asked.
    """
    archive = formats.REMOTES[name][0].filename if formats.REMOTES[name][0].extract else None

    def locate(path: Path | None, parts: tuple[str, ...], download: bool) -> Path:
        candidates = [path] if path is not None else [*default_dirs, formats.cache_dir(name)]
        for d in candidates:
            found = find(d, parts)
            if found is None and archive and (d / archive).is_file():
                formats.extract_archive(d / archive, d)
                found = find(d, parts)
            if found is not None:
                return found
        if download:
            dest = candidates[-1] if path is None else path
            formats.download(name, dest)
            found = find(dest, parts)
            if found is None:
                raise UserError(
                    f"downloaded {name} into {dest}, but {missing(dest, parts)} is still missing: report this as a bug"
                )
            return found
        if path is not None and not path.exists():
            raise UserError(f"{name}: directory {path} does not exist: {hint}")
        where = " or ".join(str(d) for d in candidates)
        raise UserError(f"{name}: {missing(candidates[0], parts)} not found in {where}: {hint}")

    return locate


def _first_dir_with(d: Path, sub: str, files: list[str]) -> Path | None:
    """``d/sub`` or ``d`` itself, whichever holds all ``files`` (users point at either)."""
    for cand in (d / sub, d):
        if all((cand / f).is_file() for f in files):
            return cand
    return None


def _first_missing(d: Path, sub: str, files: list[str]) -> str:
    base = d / sub if (d / sub).is_dir() else d
    for f in files:
        if not (base / f).is_file():
            return f"{sub}/{f}" if base != d else f
    return files[0]


def _files_for(table: dict[str, list[str]]) -> Callable[[tuple[str, ...]], list[str]]:
    return lambda parts: [f for p in parts for f in table[p]]


_CIFAR10_FILES = _files_for({"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]})
_CIFAR100_FILES = _files_for({"train": ["train"], "test": ["test"]})
_STL10_FILES = _files_for(
    {"train": ["train_X.bin", "train_y.bin"], "test": ["test_X.bin", "test_y.bin"], "unlabeled": ["unlabeled_X.bin"]}
)


def _idx_locator(name: str, hint: str, default_dirs: tuple[Path, ...] = ()):
    return _dir_locator(
        name,
        find=lambda d, parts: d if formats.idx_files_present(d, parts) else None,
        missing=lambda d, parts: formats.missing_idx_file(d, parts) or "an idx file",
        hint=hint,
        default_dirs=default_dirs,
    )


def _archive_locator(name: str, sub: str, files: Callable[[tuple[str, ...]], list[str]], hint: str):
    return _dir_locator(
        name,
        find=lambda d, parts: _first_dir_with(d, sub, files(parts)),
        missing=lambda d, parts: _first_missing(d, sub, files(parts)),
        hint=hint,
    )


def _read_digits(_location, _part, _size, _options) -> Part:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    return Part(images, digits.target.astype(np.int64), [str(i) for i in range(10)])


def _locate_path(path: Path | None, _parts, _download) -> Path:
    """For folder/features: the path must exist (it is never downloaded)."""
    assert path is not None
    if not path.exists():
        raise UserError(f"path not found: {path}")
    return path


def _locate_folder(path: Path | None, parts, download) -> Path:
    path = _locate_path(path, parts, download)
    if not path.is_dir():
        raise UserError(f"folder:{path} is not a directory: pass the directory holding the images")
    return path


def _locate_features(path: Path | None, parts, download) -> Path:
    path = _locate_path(path, parts, download)
    if not path.is_file():
        raise UserError(f"features:{path} is not a file: pass an .npy file saved with numpy.save")
    return path


def _read_features(location: Path, _part, _size, options: dict) -> Part:
    labels = options.get("labels")
    if labels is not None:
        return formats.read_features(location, Path(labels).expanduser(), labels_explicit=True)
    stem = location.name[: -len(".npy")] if location.name.lower().endswith(".npy") else location.name
    return formats.read_features(location, location.with_name(stem + ".labels.npy"), labels_explicit=False)


_MNIST_HINT = "pass mnist:DIR (the folder with the four idx files) or add --download"
_FASHION_HINT = (
    "install it with `sudo apt-get install dataset-fashion-mnist`, pass fashion-mnist:DIR, or add --download"
)


def _archive_hint(name: str, sub: str) -> str:
    return f"pass {name}:DIR (the folder holding {sub}/) or add --download"


_SOURCES: dict[str, _Source] = {
    s.name: s
    for s in (
        _Source("digits", "digits", "scikit-learn's 1797 8x8 handwritten digits (bundled)",
                ("train",), ("train",), "none", lambda p, parts, d: None, _read_digits),
        _Source("mnist", "mnist[:DIR]", "70000 28x28 handwritten digits (idx files)",
                ("train", "test"), ("train", "test"), "optional",
                _idx_locator("mnist", _MNIST_HINT),
                lambda d, part, s, o: formats.read_idx_part(d, part, formats.MNIST_CLASSES)),
        _Source("fashion-mnist", "fashion-mnist[:DIR]", "70000 28x28 clothing images (idx files)",
                ("train", "test"), ("train", "test"), "optional",
                _idx_locator("fashion-mnist", _FASHION_HINT, (FASHION_MNIST_SYSTEM_DIR,)),
                lambda d, part, s, o: formats.read_idx_part(d, part, formats.FASHION_MNIST_CLASSES)),
        _Source("cifar10", "cifar10[:DIR]", "60000 32x32 colour images, 10 classes (python pickles)",
                ("train", "test"), ("train", "test"), "optional",
                _archive_locator("cifar10", formats.CIFAR10_DIR, _CIFAR10_FILES,
                                 _archive_hint("cifar10", formats.CIFAR10_DIR)),
                lambda d, part, s, o: formats.read_cifar10_part(d, part)),
        _Source("cifar100-20", "cifar100-20[:DIR]", "60000 32x32 colour images, 20 superclasses",
                ("train", "test"), ("train", "test"), "optional",
                _archive_locator("cifar100-20", formats.CIFAR100_DIR, _CIFAR100_FILES,
                                 _archive_hint("cifar100-20", formats.CIFAR100_DIR)),
                lambda d, part, s, o: formats.read_cifar100_part(d, part)),
        _Source("stl10", "stl10[:DIR]", "13000 96x96 colour images, 10 classes (+100000 unlabeled)",
                ("train", "test", "unlabeled"), ("train", "test"), "optional",
                _archive_locator("stl10", formats.STL10_DIR, _STL10_FILES,
                                 _archive_hint("stl10", formats.STL10_DIR)),
                lambda d, part, s, o: formats.read_stl10_part(d, part)),
        _Source("folder", "folder:PATH", "your images: class subfolders give labels, a flat folder none",
                ("train",), ("train",), "required", _locate_folder,
                lambda d, part, size, o: formats.read_image_folder(d, size, o.get("backbone"), o.get("size_from", "--image-size"))),
        _Source("features", "features:PATH.npy[,labels=LABELS.npy]",
                "N x D float features; labels from LABELS.npy or PATH.labels.npy if present",
                ("train",), ("train",), "required", _locate_features, _read_features),
    )
}  # fmt: skip

DATASET_NAMES: list[str] = list(_SOURCES)

# Spellings people reach for; normalised silently. (cifar100 is refused with a pointer instead:
# only the 20-superclass version is a clustering benchmark here.)
_ALIASES = {"fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "stl-10": "stl10"}


def dataset_help() -> str:
    """One line per dataset, for ``--help`` texts."""
    width = max(len(s.usage) for s in _SOURCES.values())
    return "\n".join(f"{s.usage:<{width}}  {s.summary}" for s in _SOURCES.values())


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


class DatasetSpecTypeError(UserError, TypeError):
    """A dataset spec that is not a string: a UserError (one line) that is also a TypeError."""


def parse_spec(spec: str) -> tuple[str, Path | None, dict[str, str]]:
    """Split ``NAME[:PATH]`` into the canonical name, the path and options (features' labels=).

    Only the first colon separates, so paths may contain colons; for ``features`` only the last
    ``,labels=`` is an option, so paths may contain commas.
    """
    if spec is not None and not isinstance(spec, str):
        # Not read as str(spec): a Path names files, which need their kind (images or features)
        # said, and the spec's syntax would then depend on the type of one argument.
        hint = f": for your own files write 'folder:{spec}' (images) or 'features:{spec}' (.npy)" if isinstance(spec, os.PathLike) else ""
        raise DatasetSpecTypeError(f"the dataset spec must be a string NAME or NAME:PATH (e.g. 'digits', 'folder:/data/images'), got {spec!r}{hint}")
    text = (spec or "").strip()
    if not text:
        raise UserError(f"empty dataset name: use one of {', '.join(DATASET_NAMES)} (NAME or NAME:PATH)")
    raw_name, colon, raw_path = text.partition(":")
    name = raw_name.strip().lower().replace("_", "-")
    name = _ALIASES.get(name, name)
    if name not in _SOURCES:
        if name in ("cifar100", "cifar-100"):
            raise UserError("use cifar100-20[:DIR]: CIFAR-100 is clustered with its 20 superclasses as labels")
        if os.path.exists(os.path.expanduser(text)):
            raise UserError(
                f"unknown dataset '{text}': to use your own files write folder:{text} (images) or features:{text} (.npy)"
            )
        close = difflib.get_close_matches(name, DATASET_NAMES, n=1)
        maybe = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(
            f"unknown dataset '{raw_name}'{maybe}: known datasets are {', '.join(DATASET_NAMES)} (NAME or NAME:PATH)"
        )
    source = _SOURCES[name]
    if colon and not raw_path.strip():
        raise UserError(f"empty path after '{raw_name}:': write {source.usage}")
    options: dict[str, str] = {}
    path_text = raw_path.strip() if colon else None
    if source.path == "none" and path_text is not None:
        raise UserError(f"{name} takes no path (it is bundled with scikit-learn): write just {name}")
    if source.path == "required" and path_text is None:
        raise UserError(f"{name} needs a path: write {source.usage}")
    if name == "features" and path_text is not None and ",labels=" in path_text:
        path_text, _, labels = path_text.rpartition(",labels=")
        if not labels.strip() or not path_text.strip():
            raise UserError(f"bad features spec '{text}': write {source.usage}")
        options["labels"] = labels.strip()
    path = Path(path_text).expanduser() if path_text is not None else None
    return name, path, options


def absolute_spec(spec: str) -> str:
    """``spec`` with its paths absolute (``~`` expanded), so that a run folder's config names the
    same files from any working directory (report, predict --checkpoint, resume); NAME[:PATH]
    specs without a path are returned as they are."""
    name, path, options = parse_spec(spec)
    if path is None:
        return spec
    text = f"{name}:{os.path.abspath(path)}"
    if "labels" in options:
        text += f",labels={os.path.abspath(os.path.expanduser(options['labels']))}"
    return text


def _parse_split(source: _Source, split: str) -> tuple[str, ...]:
    text = (split or "all").strip().lower()
    if text == "all":
        return source.all_parts
    parts = tuple(p.strip() for p in text.split("+"))
    valid = ["all", *source.parts]
    for part in parts:
        if part not in source.parts:
            single = part == "test" and source.parts == ("train",)
            extra = " (it is one set with no train/test split)" if single else ""
            raise UserError(f"{source.name} has no '{part}' split{extra}: use one of {', '.join(valid)}")
    if len(set(parts)) != len(parts):
        raise UserError(f"split '{split}' names a part twice: use one of {', '.join(valid)}, joined with +")
    return parts


def _as_size(image_size) -> tuple[int, int] | None:
    """An int (square) or (height, width); None keeps the native size."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        size = (image_size, image_size)
    elif isinstance(image_size, (str, bytes)) or not hasattr(image_size, "__iter__"):
        size = ()  # 4.5 failed in tuple() with "'float' object is not iterable"
    else:
        size = tuple(image_size)
    valid = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)
    if len(size) != 2 or not valid:
        raise UserError(f"bad image size {image_size!r}: use a positive integer (pixels per side)")
    return int(size[0]), int(size[1])


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_dataset(
    spec: str,
    split: str = "all",
    download: bool = False,
    image_size: int | None = None,
    backbone: str | None = None,
    size_from: str = "--image-size",
) -> ImageDataset:
    """Load the dataset named by ``spec`` (see the module docstring).

    ``image_size`` resizes images (bilinear) to that many pixels per side (or (height, width)),
    with a note (a folder's names ``size_from``, where the size came from); feature vectors
    ignore it. Folders of image files are decoded at a working resolution chosen from the
    images and ``backbone`` when no ``image_size`` is given (``otclust.data.decode``), through
    the decoded-image cache (``otclust.data.cache``); one too large for the memory budget stays
    a memory-mapped file (``out_of_core``). ``download`` allows fetching the standard archives
    into DIR or ``~/.cache/otclust/NAME`` when they are not already there.
    """
    name, path, options = parse_spec(spec)
    if backbone is not None:
        options["backbone"] = backbone
    options["size_from"] = size_from
    source = _SOURCES[name]
    parts = _parse_split(source, split)
    size = _as_size(image_size)
    location = source.locate(path, parts, download)
    loaded = [source.read(location, part, size, options) for part in parts]

    data = loaded[0].data if len(loaded) == 1 else np.concatenate([p.data for p in loaded])
    labelled = [p.labels is not None for p in loaded]
    labels = np.concatenate([p.labels for p in loaded]) if all(labelled) else None
    paths = [q for p in loaded for q in p.paths] if all(p.paths is not None for p in loaded) else None
    notes: list[str] = []
    for p in loaded:
        notes.extend(n for n in p.notes if n not in notes)
    if labels is None and any(labelled):
        notes.append(f"split '{'+'.join(parts)}' includes unlabeled images: evaluation skipped")
    elif labels is None and not any("evaluation skipped" in n for n in notes):
        notes.append("no labels: evaluation skipped")

    display = f"{name}:{location.resolve()}" if source.path == "required" else name
    dataset = ImageDataset(
        data=torch.from_numpy(formats.writable_array(data)),
        labels=labels,
        name=display,
        paths=paths,
        class_names=loaded[0].class_names,
        notes=notes,
        split="all" if (split or "all").strip().lower() == "all" else "+".join(parts),
        out_of_core=any(p.on_disk for p in loaded),
    )
    if size is not None:
        if dataset.is_features:
            dataset.notes.append("image size ignored: the data are feature vectors")
        elif dataset.image_size != size:
            old = dataset.image_size
            dataset.data = resize_images(dataset.data, size)
            dataset.notes.append(
                f"resized all {dataset.n_samples} images from {old[0]}x{old[1]} to {size[0]}x{size[1]}"
            )
    return dataset


def place_for_training(dataset: ImageDataset, device: torch.device) -> torch.Tensor:
    """The tensor the engine draws batches from: the whole set on ``device``, or, for an
    out-of-core set, the memory-mapped data where it is (each batch is moved on its own). Sets
    how freed memory is handled for either case (``otclust.allocator``)."""
    if not dataset.out_of_core:
        allocator.reuse_freed_blocks()
        return dataset.data.to(device)
    allocator.return_freed_blocks()
    return dataset.data


def prefetch_to_device(batches, device: torch.device):
    """(batch, indices) pairs moved to ``device``, the next one gathered in a background thread
    while the current one trains: indexing a memory-mapped set reads from disk, and torch
    releases the GIL while it copies."""
    from concurrent.futures import ThreadPoolExecutor

    iterator = iter(batches)

    def fetch():
        try:
            batch, indices = next(iterator)
        except StopIteration:
            return None
        return batch.to(device, non_blocking=True), indices.to(device, non_blocking=True)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(fetch)
        while True:
            item = pending.result()
            if item is None:
                return
            pending = pool.submit(fetch)
            yield item


# --------------------------------------------------------------------------------------------
# Conforming to a model
# --------------------------------------------------------------------------------------------


def resize_images(data: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of uint8 images, antialiased when shrinking (as PIL does).

    Done in chunks so that resizing a large dataset needs float memory for a slice, not for all.
    """
    n, c, h0, w0 = data.shape
    out = torch.empty((n, c, *size), dtype=torch.uint8)
    step = max(1, (1 << 24) // (c * max(h0 * w0, size[0] * size[1])))
    antialias = size[0] < h0 or size[1] < w0
    for i in range(0, n, step):
        chunk = F.interpolate(
            data[i : i + step].float(), size=size, mode="bilinear", align_corners=False, antialias=antialias
        )
        out[i : i + step] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def to_gray(data: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W luma of N x 3 x H x W uint8 images, in PIL's exact integer arithmetic
    (``decode.luma``), so folder images converted by PIL and tensors converted here agree pixel
    for pixel."""
    return torch.from_numpy(decode.luma(data.cpu().numpy()))


def conform(dataset: ImageDataset, channels: int, image_size) -> ImageDataset:
    """The dataset as a model trained on ``channels`` x ``image_size`` images needs it.

    Lets a model trained on one dataset be applied to another (e.g. MNIST digits to a CIFAR
    model): grayscale is repeated to RGB, RGB becomes luma, sizes are resized bilinearly. Each
    change adds a note, since it can explain poor results. ``image_size`` is an int (square),
    (height, width), or None to keep the size. Returns ``dataset`` itself when nothing changes.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    size = _as_size(image_size)
    if dataset.is_features:
        expected = f"{channels}x{size[0]}x{size[1]}" if size else f"{channels}-channel"
        raise UserError(
            f"{dataset.name} holds feature vectors, but the model expects {expected} images: "
            "use an image dataset or a model trained on features"
        )
    size = size or dataset.image_size
    data, notes = dataset.data, list(dataset.notes)

    def convert(data):
        if data.shape[1] == channels:
            return data
        kind = {1: "grayscale", 3: "RGB"}
        notes.append(f"converted {kind[data.shape[1]]} images to {kind[channels]} to match the model")
        return data.expand(-1, 3, -1, -1).contiguous() if channels == 3 else to_gray(data)

    def resize(data):
        if tuple(data.shape[2:]) == size:
            return data
        notes.append(f"resized images from {data.shape[2]}x{data.shape[3]} to {size[0]}x{size[1]} to match the model")
        return resize_images(data, size)

    # Work on as few channels as possible: drop colour before resizing, add it after.
    data = resize(convert(data)) if channels < data.shape[1] else convert(resize(data))
    if data is dataset.data:
        return dataset
    return replace(dataset, data=data, notes=notes, out_of_core=False)  # converted copies are in memory


__all__ = [
    "ImageDataset",
    "load_dataset",
    "conform",
    "parse_spec",
    "dataset_help",
    "DATASET_NAMES",
    "place_for_training",
    "prefetch_to_device",
]

"""Readers for the on-disk formats the standard clustering benchmarks ship in, and their downloads.

Every reader returns plain numpy arrays (uint8 ``N x C x H x W`` images, int64 labels) so that
``datasets.py`` can treat all sources alike. Anything wrong with a file the user pointed us at
(missing, truncated, not the expected format) is a :class:`~otclust.errors.UserError` naming the
file and saying what to do, because a traceback from deep inside numpy or pickle tells a user
nothing about which of their files is the problem.

Nothing here touches the network unless :func:`download` is called, and only ``load_dataset(...,
download=True)`` calls it.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import shutil
import struct
import sys
import tarfile
import unicodedata
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from otclust.data import cache, decode
from otclust.errors import UserError

# --------------------------------------------------------------------------------------------
# Where downloads go
# --------------------------------------------------------------------------------------------


def cache_dir(name: str) -> Path:
    """Default home of a downloaded dataset: ``$XDG_CACHE_HOME/otclust/NAME`` (``~/.cache/...``).

    Read from the environment on every call so that a test (or a user) can redirect it.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "otclust" / name


# --------------------------------------------------------------------------------------------
# A loaded part of a dataset
# --------------------------------------------------------------------------------------------


@dataclass
class Part:
    """One split of a source as read from disk, before parts are joined into an ImageDataset."""

    data: np.ndarray  # uint8 N x C x H x W, or float32 N x D
    labels: np.ndarray | None
    class_names: list[str] | None = None
    paths: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    on_disk: bool = False  # data is a memory-mapped file too large for the memory budget


def one_line(error: BaseException, limit: int = 120) -> str:
    """An exception as a short single line, for messages that quote a library's reason."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def writable_array(array: np.ndarray) -> np.ndarray:
    """torch.from_numpy warns on read-only arrays (np.frombuffer, memmaps): copy those."""
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")


# --------------------------------------------------------------------------------------------
# idx (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

# Base names of the idx files per part; both the official dash names and the dotted names some
# mirrors (e.g. Kaggle) use. Each may also carry ".gz".
_IDX_NAMES = {
    "train": (
        ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
        ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ),
    "test": (
        ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
        ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
    ),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (gzipped or not: decided by its magic bytes, not its name).

    The header is checked against the file length, so a truncated download is reported as such
    instead of surfacing later as a reshape error.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path}: {one_line(e)}; delete it and fetch it again") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an idx file (bad header): use the original MNIST-format files")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated (header cut short): delete it and fetch it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: a garbled header cannot overflow
    if len(raw) - header != expected:
        raise UserError(
            f"{path} holds {len(raw) - header} data bytes but its header promises {expected}: "
            "the file is truncated or corrupt; delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def find_idx_file(directory: Path, base_names: tuple[str, ...]) -> Path | None:
    """First existing variant of an idx file in ``directory`` or the layouts other tools use."""
    for sub in ("", "raw"):
        for base in base_names:
            for suffix in (".gz", ""):
                candidate = directory / sub / (base + suffix)
                if candidate.is_file():
                    return candidate
    return None


def idx_files_present(directory: Path, parts: tuple[str, ...]) -> bool:
    return all(find_idx_file(directory, names) is not None for part in parts for names in _IDX_NAMES[part])


def missing_idx_file(directory: Path, parts: tuple[str, ...]) -> str | None:
    """Name of the first idx file needed for ``parts`` that is missing, for error messages."""
    for part in parts:
        for names in _IDX_NAMES[part]:
            if find_idx_file(directory, names) is None:
                return names[0] + ".gz"
    return None


def read_idx_part(directory: Path, part: str, class_names: list[str]) -> Part:
    """Images and labels of the ``train`` or ``test`` part of an MNIST-format directory."""
    image_names, label_names = _IDX_NAMES[part]
    image_path = find_idx_file(directory, image_names)
    label_path = find_idx_file(directory, label_names)
    if image_path is None or label_path is None:
        missing = (image_names if image_path is None else label_names)[0] + ".gz"
        raise UserError(f"{missing} not found in {directory}")
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"{image_path} should hold N x H x W uint8 images, not {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(
            f"{label_path} holds {labels.shape} labels for {len(images)} images in {image_path}: "
            "the two files do not belong together"
        )
    return Part(images[:, None], labels.astype(np.int64), list(class_names))


# --------------------------------------------------------------------------------------------
# CIFAR python pickles
# --------------------------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    The CIFAR files are pickles, and unpickling runs whatever code a file names; a dataset
    directory is user input, so only the globals the real files reference are allowed.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":  # the Python 2 era name; numpy 2 moved it
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_cifar_pickle(path: Path) -> dict[str, object]:
    """Load one CIFAR batch/meta file into a dict with ``str`` keys.

    The originals are Python 2 pickles; ``latin1`` decodes their byte strings the way numpy
    expects, and keys that still arrive as bytes (files re-pickled under Python 3) are decoded
    too, so callers can always ask for ``"data"``.
    """
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except Exception as e:  # noqa: BLE001 - garbage fed to the unpickler (which builds only arrays) fails in open-ended ways
        raise UserError(f"{path} is not a CIFAR python-format file ({one_line(e)}): use the 'python version' archive") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR python-format file (no dict inside)")

    def text(value):
        return value.decode("latin1") if isinstance(value, bytes) else value

    out = {}
    for key, value in obj.items():
        if isinstance(value, list):
            value = [text(v) for v in value]
        out[text(key)] = value
    return out


def _cifar_images(batch: dict, path: Path) -> np.ndarray:
    """Rows of 3072 bytes (1024 red, 1024 green, 1024 blue, each row-major) -> N x 3 x 32 x 32."""
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise UserError(f"{path} has no N x 3072 uint8 'data' array: not a CIFAR python-format batch")
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32)


def _cifar_labels(batch: dict, key: str, n: int, path: Path) -> np.ndarray:
    labels = batch.get(key)
    valid = isinstance(labels, (list, np.ndarray)) and len(labels) == n
    if valid:
        values = np.asarray(labels, dtype=object if isinstance(labels, list) else None)
        valid = values.ndim == 1 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < 2**31 for v in values.tolist())
    if not valid:
        raise UserError(f"{path} has no '{key}' list with one class id (>= 0) per image: not the expected CIFAR file")
    return np.asarray(labels, dtype=np.int64).reshape(n)


CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"


def read_cifar10_part(directory: Path, part: str) -> Part:
    """``train`` = data_batch_1..5 in order, ``test`` = test_batch."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if part == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = directory / name
        batch = read_cifar_pickle(path)
        images.append(_cifar_images(batch, path))
        labels.append(_cifar_labels(batch, "labels", len(images[-1]), path))
    class_names = None
    meta = directory / "batches.meta"
    if meta.is_file():
        class_names = read_cifar_pickle(meta).get("label_names")
    return Part(np.concatenate(images), np.concatenate(labels), class_names)


def read_cifar100_part(directory: Path, part: str, coarse: bool = True) -> Part:
    """CIFAR-100 with its 20 superclasses (``coarse_labels``) as labels: the clustering protocol."""
    key = "coarse_labels" if coarse else "fine_labels"
    path = directory / part
    batch = read_cifar_pickle(path)
    images = _cifar_images(batch, path)
    labels = _cifar_labels(batch, key, len(images), path)
    class_names = None
    meta = directory / "meta"
    if meta.is_file():
        class_names = read_cifar_pickle(meta).get("coarse_label_names" if coarse else "fine_label_names")
    return Part(images, labels, class_names)


# --------------------------------------------------------------------------------------------
# STL-10 binary
# --------------------------------------------------------------------------------------------

STL10_DIR = "stl10_binary"
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
_STL_IMAGE_BYTES = 3 * 96 * 96


def read_stl10_images(path: Path) -> np.ndarray:
    """STL-10 ``*_X.bin``: each image is 3 channels, each stored column-major (Matlab order).

    Memory-mapped so that the 2.7 GB unlabeled file is copied into RAM once (during the
    transposition), not twice.
    """
    if not path.is_file():
        raise UserError(f"{path} not found")
    size = path.stat().st_size
    if size == 0 or size % _STL_IMAGE_BYTES:
        raise UserError(f"{path} is {size} bytes, not a whole number of 3x96x96 images: delete it and fetch it again")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
    return np.ascontiguousarray(raw.transpose(0, 1, 3, 2))


def read_stl10_part(directory: Path, part: str) -> Part:
    """``train``/``test`` with labels 1..10 shifted to 0..9; ``unlabeled`` without labels."""
    images = read_stl10_images(directory / f"{part}_X.bin")
    labels = None
    if part != "unlabeled":
        label_path = directory / f"{part}_y.bin"
        if not label_path.is_file():
            raise UserError(f"{label_path} not found")
        raw = np.fromfile(label_path, dtype=np.uint8)
        if len(raw) != len(images) or raw.min(initial=1) < 1 or raw.max(initial=1) > 10:
            raise UserError(
                f"{label_path} should hold {len(images)} labels in 1..10: the file is corrupt or mismatched"
            )
        labels = raw.astype(np.int64) - 1
    class_names = list(STL10_CLASSES)
    names_file = directory / "class_names.txt"
    if names_file.is_file():
        lines = [line.strip() for line in names_file.read_text(errors="replace").splitlines() if line.strip()]
        if len(lines) == 10:
            class_names = lines
    return Part(images, labels, class_names)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

# .jfif: how browsers on Windows save JPEGs; .mpo: JPEGs holding more pictures (3D and depth cameras).
# .pgm/.ppm/.pbm/.pnm: Netpbm, as face and vision data sets (ORL, Yale) ship; .tga: Targa.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".mpo", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm", ".tga")


# What file systems, NAS boxes and desktops put into a photo folder of their own accord: skipped
# like hidden names. Synology's @eaDir holds several thumbnails of every photo, which were read
# as more photos of the class; a flat folder with one was refused as having class subfolders.
SYSTEM_NAMES = frozenset({"@eaDir", "#recycle", "@Recycle", "$RECYCLE.BIN", "System Volume Information", "lost+found", "Thumbs.db", "desktop.ini"})


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in SYSTEM_NAMES


def _is_image_name(name: str) -> bool:
    if _is_hidden(name):
        return False
    lower = name.lower()
    if lower.endswith(decode.HEIF_EXTENSIONS):
        return decode.heif_readable()
    if lower.endswith(decode.AVIF_EXTENSIONS):
        return decode.avif_readable()
    return lower.endswith(IMAGE_EXTENSIONS)


def _readable_extensions() -> list[str]:
    extra = [*(decode.HEIF_EXTENSIONS if decode.heif_readable() else ()), *(decode.AVIF_EXTENSIONS if decode.avif_readable() else ())]
    return [e.lstrip(".") for e in (*IMAGE_EXTENSIONS, *extra)]


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _named(names: list[str]) -> str:
    """The first three names, and '...' when there are more."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _unread_image_notes(others: list[str]) -> list[str]:
    """What to do about the files of `others` that hold pictures otclust cannot read here: HEIC
    (iPhone photos) without pillow-heif, AVIF without a Pillow built for it, camera RAW."""
    kinds = (
        (decode.HEIF_EXTENSIONS, "HEIC/HEIF", "reading them needs pillow-heif: pip install 'otclust[heif]' (or pillow-heif)"),
        (decode.AVIF_EXTENSIONS, "AVIF", "this Pillow was built without AVIF: upgrade Pillow, or convert them to JPEG or PNG"),
        (decode.RAW_EXTENSIONS, "camera RAW", "otclust reads decoded images: convert them to JPEG or PNG first"),
    )
    notes = []
    for extensions, kind, advice in kinds:
        matched = [n for n in others if n.lower().endswith(extensions)]
        if matched:
            notes.append(f"ignored {_count(len(matched), 'file')} in {kind} ({_named(matched)}): {advice}")
    return notes


class _Entry:
    """A directory entry whose kind is known once and never raises (a looping link makes
    ``DirEntry.is_file`` raise ELOOP)."""

    def __init__(self, entry: os.DirEntry):
        self.name, self.path = entry.name, entry.path

        def safe(test) -> bool:
            try:
                return test()
            except OSError:
                return False

        self.is_link = safe(entry.is_symlink)
        self.is_file = safe(entry.is_file)  # follows links; False for FIFOs, devices, sockets
        self.is_dir = safe(entry.is_dir)


def _scan(directory: str) -> tuple[list[_Entry], list[str], list[str]]:
    """Entries of a directory, plus the names of its non-image files and of its links that lead
    nowhere (broken, looping, or to something that is not a regular file: a FIFO would block
    the reader forever)."""
    entries = [_Entry(e) for e in sorted(os.scandir(directory), key=lambda e: e.name)]
    others, dangling = [], []
    for e in entries:
        if _is_hidden(e.name):
            continue
        if not e.is_file and not e.is_dir and (e.is_link or _is_image_name(e.name)):
            dangling.append(e.name)
        elif e.is_file and not _is_image_name(e.name):
            others.append(e.name)
    return entries, others, dangling


def _listing_notes(others: list[str], dangling: list[str]) -> list[str]:
    notes = _unread_image_notes(others)
    unread = decode.HEIF_EXTENSIONS + decode.AVIF_EXTENSIONS + decode.RAW_EXTENSIONS
    others = [n for n in others if not n.lower().endswith(unread)]
    if others:
        notes.append(f"ignored {_count(len(others), 'file')} without an image extension ({_named(others)})")
    if dangling:
        leads = "leads" if len(dangling) == 1 else "lead"
        notes.append(f"ignored {_count(len(dangling), 'link or special file', 'links or special files')} that {leads} to no regular file ({_named(dangling)})")
    return notes


def _images_below(directory: str, prefix: str, seen: set[str]) -> tuple[list[Path], list[str], list[str], list[str]]:
    """Image files of `directory` and of every folder below it (hidden ones skipped; unsorted:
    the caller sorts a class's files once); with the names (relative to the top folder) of its
    non-image files, of its links that lead nowhere, and of the links to folders already read
    (`seen`: real paths), which are not read twice, so a link back up the tree cannot loop."""
    seen.add(os.path.realpath(directory))
    try:
        entries, others, dangling = _scan(directory)
    except OSError as e:
        raise UserError(f"cannot list {directory}: {e.strerror}") from None
    files = [Path(e.path) for e in entries if e.is_file and _is_image_name(e.name)]
    others, dangling, repeated = [prefix + n for n in others], [prefix + n for n in dangling], []
    for e in entries:
        if e.is_dir and not _is_hidden(e.name):
            if os.path.realpath(e.path) in seen:
                repeated.append(prefix + e.name)
                continue
            sub = _images_below(e.path, f"{prefix}{e.name}/", seen)
            files += sub[0]
            others, dangling, repeated = others + sub[1], dangling + sub[2], repeated + sub[3]
    return files, others, dangling, repeated


def list_image_folder(root: Path) -> tuple[list[Path], list[int] | None, list[str] | None, list[str]]:
    """Files, labels, class names and notes of an image folder.

    Each subfolder holding images, at any depth below it, is a class (sorted by name; their order
    defines label ids), as torchvision's ImageFolder reads a folder: `photos/cats/2019/*.jpg` is of
    class `cats`. A class is named by its folder's name in composed Unicode (NFC), so folders whose
    names differ only in how accents are encoded (`café` made here, `café` decomposed by macOS)
    are one class, with a note. A folder with both class subfolders and loose images is refused
    rather than guessed at: dropping the loose ones or lumping them into a class would both skew
    evaluation silently. Files are recognised by extension; others, and links to nothing readable, are
    counted in a note. Symbolic links to files and folders are followed; a folder is read once
    (a link to one already read is named in a note), so links cannot loop.
    """
    try:
        entries, others, dangling = _scan(str(root))
    except OSError as e:
        raise UserError(f"cannot list {root}: {e.strerror}") from None
    # The real class folders count as read from the start: a link inside one class to another
    # class's folder (cats/more -> ../dogs) must not read the dogs as cats and then skip them.
    class_folders = {os.path.realpath(e.path) for e in entries if e.is_dir and not e.is_link and not _is_hidden(e.name)}
    seen = {os.path.realpath(root)} | class_folders
    loose = [Path(e.path) for e in entries if e.is_file and _is_image_name(e.name)]
    by_name: dict[str, list[Path]] = {}
    merged: list[str] = []  # classes read from more than one folder
    repeated: list[str] = []  # links to folders already read
    for entry in entries:
        if entry.is_dir and not _is_hidden(entry.name):
            own_folder = not entry.is_link and os.path.realpath(entry.path) in class_folders
            if os.path.realpath(entry.path) in seen and not own_folder:
                repeated.append(entry.name)
                continue
            files, sub_others, sub_dangling, sub_repeated = _images_below(entry.path, f"{entry.name}/", seen)
            others, dangling, repeated = others + sub_others, dangling + sub_dangling, repeated + sub_repeated
            if files:
                # The class is the name in composed form (NFC): macOS writes names decomposed (NFD),
                # so a folder copied from a Mac beside one made elsewhere (café twice) would be two
                # classes shown alike. Only the label is normalised: files keep their real paths.
                name = unicodedata.normalize("NFC", entry.name)
                if name in by_name and name not in merged:
                    merged.append(name)
                by_name.setdefault(name, []).extend(files)
    classes = [(name, sorted(files)) for name, files in sorted(by_name.items())]
    if classes and loose:
        raise UserError(
            f"{root} has both class subfolders ({_named([name for name, _ in classes])}) and {len(loose)} loose images (e.g. {loose[0].name}): "
            "move the loose images into a subfolder, or point folder: at a directory with only one kind"
        )
    notes = _listing_notes(others, dangling)
    if merged:
        notes.append(
            "folders whose names differ only in how accents are encoded (composed, or decomposed as macOS "
            f"writes them) are read as one class: {_named(merged)}"
        )
    if repeated:
        notes.append(f"ignored {_count(len(repeated), 'link')} to folders already read ({_named(repeated)}): each folder is read once")
    if classes:
        files = [f for _, fs in classes for f in fs]
        labels = [k for k, (_, fs) in enumerate(classes) for _ in fs]
        if len(classes) == 1:
            notes.append(f"only one class subfolder ({classes[0][0]}): evaluation is trivial")
        # A folder name that is not valid UTF-8 holds lone surrogates (os.fsdecode), which figures
        # and YAML cannot show: the class takes the name with those bytes shown as U+FFFD.
        return files, labels, [name.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for name, _ in classes], notes
    if loose:
        notes.append("no class subfolders: evaluation skipped")
        return loose, None, None, notes
    unread = "".join(f"; {note}" for note in _unread_image_notes(others))
    raise UserError(
        f"no images found in PATH: {root} (looked for {', '.join(_readable_extensions())} files in it and in the folders below it){unread}"
    )


def read_image_folder(
    root: Path, image_size: tuple[int, int] | None = None, backbone: str | None = None, size_from: str = "--image-size"
) -> Part:
    """Decode a folder of images into one uint8 array of a common mode and size (``decode.py``).

    Headers first (cheap): files that cannot be opened are skipped with a note, the mode (RGB
    if any image is in colour, else grey; an RGB folder whose pixels all turn out grey is kept as
    grey after decoding) and the working resolution are chosen, and the size
    of the decoded array is known before any of it is allocated. It must fit the memory budget
    (``decode.memory_budget``) unless it goes to the on-disk cache (``cache.py``), in which
    case the array stays a memory-mapped file and training reads batches from it
    (``Part.on_disk``). Files that fail only while decoding (truncated) are skipped as well.
    """
    files, labels, class_names, notes = list_image_folder(root)
    paths = [str(p) for p in files]
    probes = decode.probe_all(paths)
    skipped = [(paths[i], p.error) for i, p in enumerate(probes) if p.error]
    good = [i for i, p in enumerate(probes) if not p.error]
    if not good:
        path, reason = skipped[0]
        raise UserError(
            f"none of the {len(paths)} image files under {root} could be read (e.g. {Path(path).name}: {reason}): "
            "fix or replace them"
        )
    channels = 3 if any(probes[i].colour for i in good) else 1
    size, why = decode.working_resolution([probes[i] for i in good], backbone, image_size, size_from)
    if why:
        notes.append(why)
    for note in (decode.elongated_note([probes[i] for i in good]), decode.several_frames_note([probes[i] for i in good])):
        if note:
            notes.append(note)
    shape = (len(good), channels, *size)
    need = decode.estimated_bytes(*shape[:2], size)
    budget = decode.memory_budget()
    fits = need <= budget
    settings = decode.SETTINGS
    if not fits and not settings.cache:
        raise UserError(
            f"{len(good)} images decoded at {size[0]}x{size[1]} need {decode.format_bytes(need)}, over the memory "
            f"budget of {decode.format_bytes(budget)} (--memory-budget): use a smaller --image-size, or drop "
            "--no-cache to decode into the on-disk cache and train from there"
        )
    good_paths = [paths[i] for i in good]
    array = entry = None
    kept = list(range(len(good)))
    use_cache = settings.cache and (len(good) >= settings.cache_min_images or not fits)
    if use_cache:
        key = cache.key_for(good_paths, size, channels)
        hit = cache.lookup(key, channels, size)
        if hit is not None:
            array, meta = hit
            kept = [int(i) for i in meta["kept"]]
            skipped += [(good_paths[int(i)], reason) for i, reason in meta.get("failed", [])]
            notes.append(f"reused the decoded images cached in {cache.cache_root() / key}.npy")
        elif cache.free_space(cache.cache_root()) < need + (64 << 20):
            where = cache.cache_root()
            if not fits:
                raise UserError(
                    f"the decoded images need {decode.format_bytes(need)} on disk in {where}, which has less free: "
                    "point --cache-dir (or OTCLUST_CACHE) at a disk with room, or use a smaller --image-size"
                )
            notes.append(f"not caching the decoded images: too little free space in {where}")
        else:
            try:
                entry = cache.Entry(key, shape)
            except OSError as e:
                if not fits:
                    raise UserError(
                        f"cannot write the decoded-image cache in {cache.cache_root()} ({e.strerror}): "
                        "point --cache-dir (or OTCLUST_CACHE) at a writable disk, or use a smaller --image-size"
                    ) from None
                notes.append(f"not caching the decoded images: {cache.cache_root()}: {e.strerror}")
    if array is None:
        try:
            out = entry.array if entry is not None else np.empty(shape, dtype=np.uint8)
        except MemoryError:
            raise UserError(
                f"out of memory allocating {decode.format_bytes(need)} for the decoded images: use a smaller "
                "--image-size, or a lower --memory-budget so that they are decoded into the on-disk cache"
            ) from None
        try:
            failed = decode.decode_into(out, good_paths, size, rgb=channels == 3)
            if failed and len(failed) == len(good):
                raise UserError(
                    f"none of the {len(paths)} image files under {root} could be decoded "
                    f"(e.g. {Path(good_paths[0]).name}: {next(iter(failed.values()))}): fix or replace them"
                )
            kept = [i for i in range(len(good)) if i not in failed]
            skipped += [(good_paths[i], reason) for i, reason in failed.items()]
            if entry is not None:
                if failed:
                    entry.drop_rows(set(failed))
                array = entry.commit({"kept": kept, "failed": sorted(failed.items()), "shape": list(shape)})
                notes.append(
                    f"decoded images cached in {cache.cache_root() / entry.key}.npy ({decode.format_bytes(need)}; "
                    "reused while the folder is unchanged; --no-cache to skip)"
                )
            else:
                array = out[kept] if failed else out
        except BaseException:
            if entry is not None:
                entry.abandon()
            raise
    if channels == 3 and fits and decode.grey_content(array):
        array = decode.luma(array)
        notes.append(
            "every image is stored in colour but holds only grey (equal red, green and blue in every pixel): "
            "trained as grey, one channel"
        )
    if skipped:
        notes.append(decode.summarize_skipped(skipped, len(paths)))
    if not fits:
        notes.append(
            f"the decoded images ({decode.format_bytes(need)}) exceed the memory budget "
            f"({decode.format_bytes(budget)}): training reads each batch from the memory-mapped cache file"
        )
    chosen = [good[i] for i in kept]
    return Part(
        array,
        None if labels is None else np.asarray([labels[i] for i in chosen], dtype=np.int64),
        class_names,
        [paths[i] for i in chosen],
        notes,
        on_disk=not fits,
    )


# --------------------------------------------------------------------------------------------
# Feature vectors (.npy)
# --------------------------------------------------------------------------------------------


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise UserError(f"cannot read {path}: {one_line(e)}") from None
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):  # neither .npy nor an .npz (zip) archive
        if path.suffix.lower() in (".csv", ".tsv", ".txt"):
            delimiter = "\\t" if path.suffix.lower() == ".tsv" else ","
            raise UserError(
                f"{path} is a text table; {what} are read from a .npy file: convert it once with "
                f"numpy.save('{path.stem}.npy', numpy.loadtxt('{path.name}', delimiter='{delimiter}', ndmin=2)) (add skiprows=1 for a header row)"
            )
        raise UserError(f"{path} is not a .npy file: save the {what} with numpy.save(PATH.npy, array)")
    try:
        array = np.load(path, allow_pickle=False)
    except OSError as e:
        raise UserError(f"cannot read {path}: {one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - numpy parses a garbled header with ast (SyntaxError, tokenize errors, ...)
        raise UserError(f"{path} is not a plain numeric .npy array ({one_line(e)}): save it with numpy.save") from None
    if not isinstance(array, np.ndarray):
        raise UserError(f"{path} is an .npz archive: save the single array with numpy.save(PATH.npy, array)")
    return array


def read_features(path: Path, labels_path: Path | None, labels_explicit: bool) -> Part:
    """N x D float32 features, plus labels from ``labels_path`` if given or found beside them.

    Labels may be non-negative integers (kept as they are) or strings (mapped to 0..K-1 in
    sorted order, with the strings as class names).
    """
    array = _load_npy(path, "features")
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise UserError(f"{path} holds an array of shape {array.shape}: features must be a non-empty N x D matrix")
    if array.dtype.kind not in "biuf":
        raise UserError(f"{path} holds {array.dtype} values: features must be numbers")
    if array.dtype.kind == "f":  # judged before the cast to float32, which turns values beyond its range into inf
        bad = ~np.isfinite(array)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise UserError(
                f"{path} has NaN or infinite values in {len(rows)} rows (first: row {rows[0]}): "
                "remove or impute them before clustering"
            )
        largest = max(abs(float(array.max())), abs(float(array.min())))  # no N x D copy as np.abs would make
        if largest > float(np.finfo(np.float32).max):
            raise UserError(
                f"{path} holds values up to {largest:g}, beyond float32's range (about 3.4e38) in which otclust computes: "
                "rescale them (e.g. standardise each feature) and save again"
            )
    features = array.astype(np.float32)
    notes: list[str] = []
    labels = class_names = None
    if labels_path is not None and (labels_explicit or labels_path.is_file()):
        labels, class_names = _read_labels(labels_path, len(features))
    else:
        hint = f" (looked for {labels_path})" if labels_path is not None else ""
        notes.append(f"no labels{hint}: evaluation skipped")
    return Part(writable_array(features), labels, class_names, None, notes)


def _read_labels(path: Path, n: int) -> tuple[np.ndarray, list[str] | None]:
    labels = _load_npy(path, "labels")
    if labels.ndim != 1 or len(labels) != n:
        raise UserError(
            f"{path} holds labels of shape {labels.shape}, but the features have {n} rows: need one label per row"
        )
    kind = labels.dtype.kind
    if kind in "US":
        names, ids = np.unique(labels, return_inverse=True)
        text = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in names.tolist()]
        return ids.astype(np.int64).reshape(-1), text
    if kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise UserError(f"{path} holds non-integer labels: labels must be class ids (integers) or strings")
        labels = labels.astype(np.int64)
    elif kind in "biu":
        labels = labels.astype(np.int64)
    else:
        raise UserError(f"{path} holds {labels.dtype} labels: labels must be class ids (integers) or strings")
    if n and labels.min() < 0:
        raise UserError(f"{path} has negative labels (e.g. {labels.min()}): class ids must be >= 0")
    return labels, None


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """One file of a dataset: mirrors tried in order, MD5 checked, tar archives extracted."""

    filename: str
    urls: tuple[str, ...]
    md5: str
    extract: bool = False


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FASHION_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_TORONTO = ("https://www.cs.toronto.edu/~kriz/", "https://cave.cs.toronto.edu/kriz/")


def _idx_remotes(mirrors: tuple[str, ...], md5s: dict[str, str]) -> tuple[Remote, ...]:
    return tuple(Remote(name, tuple(m + name for m in mirrors), md5) for name, md5 in md5s.items())


REMOTES: dict[str, tuple[Remote, ...]] = {
    "mnist": _idx_remotes(
        _MNIST_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": _idx_remotes(
        (_FASHION_MIRROR,),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": (
        Remote("cifar-10-python.tar.gz", tuple(m + "cifar-10-python.tar.gz" for m in _TORONTO),
               "c58f30108f718f92721af3b95e74349a", extract=True),
    ),
    "cifar100-20": (
        Remote("cifar-100-python.tar.gz", tuple(m + "cifar-100-python.tar.gz" for m in _TORONTO),
               "eb9058c3a382ffc7106e4002c42a8d85", extract=True),
    ),
    "stl10": (
        Remote("stl10_binary.tar.gz", ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",),
               "91f7769df0f17e558f3565bffb0c7dfb", extract=True),
    ),
}  # fmt: skip


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(remote: Remote, dest: Path, name: str) -> None:
    """Download ``remote`` to ``dest`` via a ``.part`` file, so an interrupted run leaves no
    file that a later run would mistake for a complete one."""
    tmp = dest.with_name(dest.name + ".part")
    failures = []
    for url in remote.urls:
        print(f"downloading {url} -> {dest}", file=sys.stderr, flush=True)
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "otclust"})
            with urllib.request.urlopen(request, timeout=60) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as e:
            failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
            tmp.unlink(missing_ok=True)
            continue
        got = md5sum(tmp)
        if got != remote.md5:
            failures.append(f"{url}: checksum {got} instead of {remote.md5}")
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, dest)
        return
    raise UserError(
        f"could not download {name} ({'; '.join(failures)}): check the network, or fetch "
        f"{remote.filename} yourself and pass {name}:DIR"
    )


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a .tar.gz into ``dest``; members may not escape it (tarfile's ``data`` filter)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # Python without the filter backport: check member paths ourselves
                root = dest.resolve()
                for member in tar.getmembers():
                    target = (dest / member.name).resolve()
                    escapes = target != root and root not in target.parents
                    if escapes or member.issym() or member.islnk():
                        raise UserError(f"{archive} contains an unsafe member {member.name!r}: not extracting it")
                tar.extractall(dest)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"cannot extract {archive} ({one_line(e)}): delete it and fetch it again") from None


def download(name: str, dest: Path) -> None:
    """Fetch the files of dataset ``name`` into ``dest`` and unpack archives there.

    Files already present are kept, whatever their checksum: a repackaged but valid copy (the
    Debian Fashion-MNIST files are re-gzipped) must not be overwritten, and a corrupt one is
    reported by its reader with the advice to delete it. Downloaded archives are removed once
    unpacked (STL-10's is 2.6 GB).
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create download directory {dest}: {e.strerror}; pass {name}:DIR with a writable DIR"
        ) from None
    for remote in REMOTES[name]:
        target = dest / remote.filename
        fetched = not target.is_file()
        if fetched:
            _fetch(remote, target, name)
        if remote.extract:
            extract_archive(target, dest)
            if fetched:
                target.unlink(missing_ok=True)


__all__ = [
    "Part",
    "writable_array",
    "cache_dir",
    "read_idx",
    "read_idx_part",
    "idx_files_present",
    "missing_idx_file",
    "read_cifar_pickle",
    "read_cifar10_part",
    "read_cifar100_part",
    "read_stl10_images",
    "read_stl10_part",
    "list_image_folder",
    "read_image_folder",
    "read_features",
    "download",
    "extract_archive",
    "REMOTES",
    "IMAGE_EXTENSIONS",
]

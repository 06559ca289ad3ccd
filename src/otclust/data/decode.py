"""Decoding a folder of image files into one uint8 array: fast, in bounded memory, and never
stopped by one bad file.

How a folder becomes ``N x C x S x S`` bytes (what ``formats.read_image_folder`` calls):

1. ``probe``: each file's header only (size, mode, format); files that cannot be opened are
   set aside with the reason, not fatal.
2. ``working_resolution``: the side S of the square the images are decoded to, from the data
   and the backbone: the median shorter side of the images, capped at what the backbone is
   built for (``BACKBONE_SIDE``; for a pretrained backbone, the side its library's
   preprocessing resizes to before its centre crop: ``backbone_cap``), unless ``--image-size``
   gives it.
3. ``decode_into``: every image is decoded, EXIF-rotated, its colours taken to sRGB when it
   embeds another colour profile (``to_srgb``: Display P3, Adobe RGB), converted to 8-bit grey or RGB
   (``to_uint8``), scaled so that its shorter side is S and centre-cropped to S x S
   (``PIL.ImageOps.fit``: nothing is padded and the aspect ratio is kept; the longer side loses
   its ends). JPEGs (and MPOs) are decoded at a reduced scale first (``Image.draft``: the DCT is
   scaled by 1/2, 1/4 or 1/8, never below the target), which is most of the speed on
   photo-sized files, and why they are read at any size. Several worker processes decode at
   once; results are written straight
   into the destination, which may be a memory-mapped file (``cache.py``), so the decoded set
   never needs to fit in RAM.

Colour modes: an image counts as colour unless its mode is grey (1, L, LA, I, I;16*, F) or it is
a palette image whose palette holds only greys. If any image of the folder is colour all are
decoded to RGB (grey ones repeated into three channels), else all to grey. A folder decoded to RGB
in which every pixel of every image has its red, green and blue within ``GREY_TOLERANCE`` of each
other (grey pictures stored as colour files: RGB JPEGs of scans, X-rays, MNIST-like images) is
then kept as grey, its luma as PIL computes it (``grey_content``, ``luma``); one too large for the
memory budget stays RGB on disk.

Images of more than 8 bits are rescaled to 8 bits, not clipped, from the whole bit depth that holds
their largest value (``bit_depth``: 8, 10, 12, 14 or 16): 16-bit files of 10- to 14-bit cameras
(microscopes, scientific cameras: 0..4095 for 12 bits) fill 0..255 (until 2026-12-07 all were
divided by 257, 16 dark grey levels for 12-bit data), full-range 16-bit ones are divided by 257,
and 8-bit values written into a 16-bit file are kept. The depth is judged per image, from its
values alone: frames of one camera keep their relative brightness, but a 12-bit frame whose
brightest pixel is under 1024 (a quarter of its range) reads as 10-bit, 4 times brighter than the
camera's other frames, and a dark 16-bit image whose largest value is under 4096 reads as 12-bit,
16 times brighter than its 16-bit neighbours. 32-bit integer and float images are read the same
way when they hold more than 0..255, else as 0..255, float ones in [0, 1] scaled by 255 (which
range they hold is judged by the 99th percentile, so that a few stray pixels do not change it).
Grey TIFFs stored WhiteIsZero (TIFF tag 262 = 0: scanners, some microscopes) read as a viewer shows
them at every bit depth: Pillow inverts 1- to 8-bit ones itself, and 16-bit ones are inverted here
(within the depth judged; Pillow reads them as stored, black and white swapped). Not inverted:
WhiteIsZero float TIFFs (Pillow reads them as stored, and their black has no fixed value);
big-endian 16-bit ones Pillow cannot open at all, and they are skipped. Alpha is dropped
(transparent pixels keep the colour they store); CMYK and YCbCr go through Pillow's own
conversion to RGB.

Formats beyond Pillow's own: HEIC/HEIF (what iPhones save) are read through pillow-heif when it
is installed (the ``heif`` extra), which applies the file's rotation itself and, like a JPEG's
draft, decodes an embedded thumbnail instead of the photo when one is large enough; AVIF when this
Pillow was built with it. Without them, and for camera RAW files, the folder listing says what
to install or convert (``formats.list_image_folder``) instead of passing them over in silence.

Process-wide settings (``SETTINGS``) hold what the command line's data options set (workers,
cache, memory budget, progress) so that every command that loads data honours them.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Extensions of images Pillow reads only with help (heif_readable, avif_readable), and of camera
# RAW files, which are not decoded images at all: the listing names each kind with what to do.
HEIF_EXTENSIONS = (".heic", ".heif", ".hif")  # .hif: Canon and Fujifilm cameras' HEIF
AVIF_EXTENSIONS = (".avif",)
RAW_EXTENSIONS = (".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf", ".rw2", ".raf", ".srw", ".pef")

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_EXIF_ORIENTATION = 0x0112

# The largest square side each backbone is built for; the working resolution is the images'
# median shorter side capped at this. The small CNN (three stride-2 convolutions, then a dense
# layer) grows with the input area and runs on a CPU; the CIFAR-stem ResNets pool globally
# and are meant for a GPU, where twice the side is affordable. A pretrained backbone's cap comes
# from its library (``backbone_cap``).
BACKBONE_SIDE = {"small-cnn": 64, "pooled-cnn": 64, "mlp": 32, "resnet18": 96, "resnet34": 96}
DEFAULT_BACKBONE = "small-cnn"  # what backbone 'auto' builds for images

# The largest spread between a pixel's red, green and blue (of 255) that still counts as grey:
# grey content saved as an RGB JPEG decodes to equal channels, and a few levels more are invisible.
# Such a folder trains as grey, exactly as the same pictures in grey files would: the same
# information in a third of the memory, the grey augmentation preset instead of colour jitter and
# hue turns that have nothing to act on, and no note about colour photos.
GREY_TOLERANCE = 4
# ITU-R 601-2 luma in PIL's 16-bit fixed point (its convert("L")), so that images made grey here
# and by PIL agree pixel for pixel.
LUMA_WEIGHTS = (19595, 38470, 7471)

# Below this many files, a pool of processes costs more to start than it saves.
_POOL_MIN_FILES = 64


@dataclass
class DecodeSettings:
    """What the data options of the command line set; the library uses the same defaults.

    ``workers`` None: one per available CPU core, at most 8. ``memory_budget`` None: half of the
    memory available now. ``cache_min_images``: smaller folders are decoded again each time
    (that takes well under a second) instead of filling the cache.
    """

    workers: int | None = None
    cache: bool = True
    cache_dir: str | None = None
    memory_budget: float | None = None  # bytes
    cache_min_images: int = 200
    progress: bool = True


SETTINGS = DecodeSettings()


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (MemAvailable; else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30  # unknown platform: assume a small machine


def memory_budget() -> int:
    """Bytes a decoded data set may take in RAM: --memory-budget, else half of what is available."""
    if SETTINGS.memory_budget is not None:
        return int(SETTINGS.memory_budget)
    return available_memory() // 2


def format_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """A file's header: (height, width) as shown (after EXIF rotation), colour or not, format.

    ``error`` is set instead when the file cannot be used, with a short reason.
    """

    height: int = 0
    width: int = 0
    colour: bool = False
    format: str = ""
    error: str | None = None
    frames: int = 1  # pages of a TIFF, frames of an animated GIF/WebP/PNG: the first is decoded


def _decode_errors():
    # Pillow's decoders fed damaged bytes raise far more than OSError (struct.error, IndexError,
    # ZeroDivisionError, KeyError from TIFF tags...); any of them means "this file is unusable",
    # and the reason is shown in the skipped-files note, so nothing is hidden.
    return (Exception,)


def _short_reason(error: BaseException, path: str = "") -> str:
    from PIL import Image

    if isinstance(error, Image.DecompressionBombError):
        return "over Pillow's decompression-bomb limit"
    text = " ".join(str(error).replace(f" {path!r}", "").split()) or type(error).__name__
    return text if len(text) <= 80 else text[:77] + "..."


@functools.cache
def heif_readable() -> bool:
    """Whether HEIC/HEIF files can be read: pillow-heif is installed. Registers its opener with
    Pillow once per process (a spawned decoding worker registers again when it meets one)."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


@functools.cache
def avif_readable() -> bool:
    """Whether this Pillow was built with AVIF (its wheels have it since 11.2)."""
    from PIL import features

    try:
        return bool(features.check("avif"))
    except ValueError:  # a Pillow that does not know the feature's name
        return False


# Formats decoded at a reduced scale (``Image.draft``): JPEG, MPO (a JPEG holding more than one
# picture, as cameras and phones write for depth or stereo; its first is the photo) and HEIF.
_DRAFT_FORMATS = ("JPEG", "MPO", "HEIF")
_JPEG_SIGNATURE = b"\xff\xd8\xff"


def _open(path: str):
    """Image.open, except that a JPEG (or MPO) is opened without Pillow's decompression-bomb
    check: above twice MAX_IMAGE_PIXELS (179 MP, less than a 200 MP phone photo) Image.open
    refuses it, while its reduced decoding (at most 1/8 of each side, ``decode_one``) never
    holds the full-size pixels. Every other format keeps the check."""
    from PIL import Image, JpegImagePlugin

    if path.lower().endswith(HEIF_EXTENSIONS):
        heif_readable()
    with open(path, "rb") as f:
        is_jpeg = f.read(3) == _JPEG_SIGNATURE
    if is_jpeg:
        return JpegImagePlugin.jpeg_factory(path)
    return Image.open(path)


def _is_colour(img) -> bool:
    if img.mode in _GRAY_MODES:
        return False
    if img.mode in ("P", "PA"):
        palette = np.asarray(img.getpalette() or [], dtype=np.uint8)
        palette = palette[: len(palette) - len(palette) % 3].reshape(-1, 3)
        return bool(np.any(palette != palette[:, :1]))
    return True


def probe(path: str) -> Probe:
    """Read one header. Huge images (over Pillow's ``MAX_IMAGE_PIXELS``) are accepted only as
    JPEG or MPO, whose reduced decoding never holds the full-size pixels; others are refused."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decompression-bomb notices, truncated-TIFF notices: judged here
            with _open(path) as img:
                w, h = img.size
                if w < 1 or h < 1:
                    return Probe(error="has no pixels")
                limit = Image.MAX_IMAGE_PIXELS
                if limit and w * h > limit and img.format not in ("JPEG", "MPO"):
                    return Probe(error=f"{w}x{h} is over Pillow's decompression-bomb limit of {limit // 10**6} MP")
                try:
                    if img.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                        w, h = h, w
                except Exception:  # a broken EXIF block must not make a good image unreadable
                    pass
                # An MPO's further pictures are a depth map or the other eye: not pages of its own.
                frames = 1 if img.format == "MPO" else int(getattr(img, "n_frames", 1) or 1)
                return Probe(h, w, _is_colour(img), img.format or "", frames=frames)
    except _decode_errors() as e:
        return Probe(error=_short_reason(e, path))


@functools.lru_cache(maxsize=16)
def _srgb_transform(icc_profile: bytes, mode: str):
    """littlecms transform from an embedded colour profile to sRGB (perceptual), or None when the
    profile is sRGB already or cannot be read. Cached: a folder's photos share a few profiles."""
    import io

    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if "srgb" in ImageCms.getProfileDescription(source).lower():
            return None
        return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), mode, "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None  # a damaged profile: the pixels as stored


def to_srgb(img):
    """RGB or CMYK pixels of an image with an embedded colour profile (Display P3 of iPhones,
    Adobe RGB of cameras) in sRGB, as a viewer shows them: the same scene from two devices then
    gives the same colours, not two colour casts a network could sort by."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK"):
        return img
    if img.mode == "RGBA":
        img = img.convert("RGB")  # alpha is dropped anyway (module docstring)
    transform = _srgb_transform(bytes(icc), img.mode)
    if transform is None:
        return img
    from PIL import ImageCms

    return ImageCms.applyTransform(img, transform)


# Bit depths that cameras and scanners store; 10, 12 and 14 bits are written into 16-bit files.
BIT_DEPTHS = (8, 10, 12, 14, 16)


def bit_depth(peak: float) -> int:
    """The smallest of ``BIT_DEPTHS`` whose range (0 .. 2**bits - 1) holds ``peak``, else 16.

    Whole depths, not the image's own maximum: two frames of one 12-bit camera are scaled alike
    (each by 255 / 4095) however bright each is, unless one's brightest pixel is under a quarter of
    the range (1024), when it is read at 10 bits, 4 times brighter."""
    return next((bits for bits in BIT_DEPTHS if peak < 2**bits), 16)


def to_uint8(img, rgb: bool):
    """EXIF rotation applied, colours in sRGB, then 8-bit L or RGB as the module docstring says."""
    from PIL import Image, ImageOps

    # Pillow inverts a TIFF stored WhiteIsZero (PhotometricInterpretation 0, as scanners and some
    # microscopes write) at 1 to 8 bits, but reads a 16-bit one as stored: black and white swapped.
    # Read here, before the EXIF rotation returns an image without the TIFF's tags.
    white_is_zero = img.mode.startswith("I;16") and getattr(img, "tag_v2", {}).get(262) == 0
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF: keep the stored orientation
        pass
    if rgb:
        img = to_srgb(img)
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float32)
        # Whether a 32-bit or float image holds 0..255 or [0, 1] is judged from the 99th percentile,
        # not the maximum: one stray pixel at 1.01 in a [0, 1] float image (or 256 in 0..255
        # integers) read the whole image as the next range up, almost black. Values beyond the
        # range found are clipped.
        peak = float(np.percentile(arr, 99)) if arr.size else 0.0
        if img.mode.startswith("I;16") or peak > 255:
            # A 16-bit file often holds 10 to 14 bits (microscopes, scientific cameras): read at the
            # whole bit depth of its largest value, 0..4095 fill 0..255 (divided by 257 they were 16
            # dark levels). The maximum, not a percentile: sparse bright pixels (stained cells on a
            # dark background) are signal, never clipped, and cannot exceed their camera's depth.
            arr = arr * (255.0 / (2 ** bit_depth(float(arr.max(initial=0))) - 1))
        elif img.mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        img = Image.fromarray(255 - arr if white_is_zero else arr, "L")
    return img.convert("RGB" if rgb else "L")


def decode_one(path: str, size: tuple[int, int], rgb: bool) -> np.ndarray:
    """One file -> C x H x W uint8, centre-cropped to ``size`` (height, width)."""
    from PIL import Image, ImageOps

    h, w = size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _open(path) as img:
            if img.format in _DRAFT_FORMATS:
                # Both sides at least the target's larger side, so that after an EXIF rotation
                # and the centre crop the target is still a reduction, never an enlargement.
                # HEIF (pillow-heif): the file's smallest embedded thumbnail that is that large
                # and a faithful scaled copy (same turn, crop and colours), as phones store one.
                side = max(h, w)
                img.draft("RGB" if rgb else "L", (side, side))
            img = to_uint8(img, rgb)
            if img.size != (w, h):
                img = ImageOps.fit(img, (w, h), Image.BILINEAR)
            arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_or_reason(args) -> tuple[np.ndarray | None, str | None]:
    path, size, rgb = args
    try:
        return decode_one(path, size, rgb), None
    except _decode_errors() as e:
        return None, _short_reason(e, path)


# --------------------------------------------------------------------------------------------
# Many files
# --------------------------------------------------------------------------------------------


def _pool(workers: int):
    import multiprocessing

    # fork: the workers need only Pillow and numpy, already imported; spawn would import torch
    # again in each. Elsewhere (macOS, Windows) the platform default.
    method = "fork" if sys.platform.startswith("linux") else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def _map(function, items: list, workers: int, description: str | None):
    """function over items in order, in ``workers`` processes when that pays, with a progress bar."""
    workers = max(1, workers)
    show = description is not None and SETTINGS.progress and len(items) >= _POOL_MIN_FILES
    if workers == 1 or len(items) < _POOL_MIN_FILES:
        results = map(function, items)
        pool = None
    else:
        pool = _pool(min(workers, len(items)))
        results = pool.map(function, items, chunksize=max(1, min(32, len(items) // (8 * workers))))
    try:
        if show:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(items), desc=description, unit="img", leave=False, file=sys.stderr, disable=None)
        yield from results
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def probe_all(paths: list[str], workers: int | None = None) -> list[Probe]:
    return list(_map(probe, paths, workers or SETTINGS.workers or default_workers(), "reading headers"))


def decode_into(
    out: np.ndarray, paths: list[str], size: tuple[int, int], rgb: bool, workers: int | None = None
) -> dict[int, str]:
    """Decode ``paths`` into ``out[i]`` (C x H x W each); returns {index: reason} of failures.

    A file whose header was fine can still fail here (a truncated JPEG); its row is left
    zero and reported, the caller drops it.
    """
    failed: dict[int, str] = {}
    items = [(p, size, rgb) for p in paths]
    description = f"decoding images to {'RGB' if rgb else 'grey'} {size[0]}x{size[1]}"
    results = _map(_decode_or_reason, items, workers or SETTINGS.workers or default_workers(), description)
    for i, (arr, reason) in enumerate(results):
        if arr is None:
            out[i] = 0
            failed[i] = reason
        else:
            out[i] = arr
    return failed


def backbone_cap(backbone: str | None) -> tuple[int, str]:
    """The largest side worth decoding to for ``backbone``, and where it comes from (for the note).

    otclust's own networks: ``BACKBONE_SIDE``. A pretrained one (timm:, torchvision:, otclust:):
    the side its library's preprocessing resizes to (``pretrained.decode_side``), not the small
    CNN's 64 px, which the library then scaled up to its 224 px input, most of the detail lost."""
    from otclust.models.pretrained import decode_side, is_pretrained  # imports torch: only when asked

    if is_pretrained(backbone):
        return decode_side(backbone)
    name = backbone if backbone in BACKBONE_SIDE else DEFAULT_BACKBONE
    return BACKBONE_SIDE[name], f"the {name} backbone's cap"


def working_resolution(
    probes: list[Probe], backbone: str | None, requested, size_from: str = "--image-size"
) -> tuple[tuple[int, int], str]:
    """(height, width) to decode to and a note saying why; ``size_from`` names where a
    ``requested`` size came from (fit's option, or predict's model)."""
    if requested is not None:
        if all((p.height, p.width) == tuple(requested) for p in probes):
            return tuple(requested), f"images read at their own size, {requested[0]}x{requested[1]} ({size_from})"
        return tuple(requested), f"images centre-cropped and resized to {requested[0]}x{requested[1]} ({size_from})"
    cap, cap_from = backbone_cap(backbone)
    shorter = sorted(min(p.height, p.width) for p in probes)
    median = shorter[len(shorter) // 2]
    side = max(1, min(cap, median))
    same = all(p.height == side and p.width == side for p in probes)
    if same:
        return (side, side), ""
    why = f"the images' median shorter side, {median} px" if side == median else f"{cap_from} ({cap} px; median shorter side {median} px)"
    return (side, side), (
        f"working resolution {side}x{side}: {why}; each image scaled so its shorter side is {side} and "
        f"centre-cropped to a square (--image-size N overrides)"
    )


ELONGATED_RATIO = 2.0  # longer side over shorter side beyond which a centre-cropped square keeps under half


def several_frames_note(probes: list[Probe]) -> str:
    """A note naming how many images hold more than one page or frame, or "" when none does: only
    the first of each is decoded, which the user of a stack of scans should know."""
    many = [p for p in probes if p.frames > 1]
    if not many:
        return ""
    return f"{len(many)} of {len(probes)} images hold several pages or frames (multi-page TIFF, animated GIF, WebP or PNG; up to {max(p.frames for p in many)}): only the first of each is used"


def elongated_note(probes: list[Probe]) -> str:
    """A note naming how many images the square centre crop cuts to less than half (panoramas,
    receipts, screenshots of long pages), or "" when none is: the user should know that the
    network never sees the rest of those images."""
    long = [p for p in probes if min(p.height, p.width) > 0 and max(p.height, p.width) > ELONGATED_RATIO * min(p.height, p.width)]
    if not long:
        return ""
    longest = max(max(p.height, p.width) / min(p.height, p.width) for p in long)
    return (
        f"{len(long)} of {len(probes)} images are more than {ELONGATED_RATIO:g} times as long as they are wide (up to "
        f"{longest:.0f}:1): the centre-cropped square keeps under half of each; crop or split them first if their ends matter"
    )


def _chunks(array: np.ndarray):
    """Slices of ``array`` (N x ...) of about 16 MB each: it may be a memory-mapped file."""
    step = max(1, (1 << 24) // max(1, int(np.prod(array.shape[1:]))))
    for i in range(0, len(array), step):
        yield i, np.asarray(array[i : i + step])


def grey_content(array: np.ndarray, tolerance: int = GREY_TOLERANCE) -> bool:
    """Whether every pixel of the N x 3 x H x W uint8 ``array`` has its three channels within
    ``tolerance`` of each other."""
    for _, chunk in _chunks(array):
        if int((chunk.max(axis=1) - chunk.min(axis=1)).max(initial=0)) > tolerance:
            return False
    return True


def luma(array: np.ndarray) -> np.ndarray:
    """N x 1 x H x W uint8 luma of N x 3 x H x W uint8 images, exactly as PIL's convert("L")."""
    out = np.empty((len(array), 1, *array.shape[2:]), dtype=np.uint8)
    weights = np.asarray(LUMA_WEIGHTS, dtype=np.uint32).reshape(1, 3, 1, 1)
    for i, chunk in _chunks(array):
        out[i : i + len(chunk)] = ((chunk * weights).sum(axis=1, keepdims=True) + 0x8000) >> 16
    return out


def estimated_bytes(n: int, channels: int, size: tuple[int, int]) -> int:
    return int(n) * int(channels) * int(size[0]) * int(size[1])


def summarize_skipped(skipped: list[tuple[str, str]], total: int) -> str:
    """One line: how many files were skipped, and the first three with their reasons."""
    shown = "; ".join(f"{Path(p).name} ({reason})" for p, reason in skipped[:3])
    more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return f"skipped {len(skipped)} of {total} image files that could not be decoded: {shown}{more}"


__all__ = [
    "SETTINGS",
    "DecodeSettings",
    "BACKBONE_SIDE",
    "Probe",
    "probe",
    "probe_all",
    "decode_one",
    "decode_into",
    "to_uint8",
    "bit_depth",
    "grey_content",
    "luma",
    "working_resolution",
    "backbone_cap",
    "estimated_bytes",
    "memory_budget",
    "available_memory",
    "default_workers",
    "format_bytes",
    "summarize_skipped",
]

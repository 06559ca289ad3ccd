"""The data sets of the generalisation suite (benchmarks/generalization.py), made offline.

Each set is written once into a cache folder (default bench-out/suite-data, git-ignored) whose
name holds every parameter that changes its content, and is then named to `otclust fit` as any
user's data would be: ``--data SPEC --split SPLIT --clusters K``. Nothing here trains or scores.

    digits        scikit-learn's 8x8 digits, bundled (1797 images, 10 classes)
    fmnist-10k    a class-balanced 10,000-image subset of Fashion-MNIST's train split (idx files)
    fmnist-test   Fashion-MNIST's 10,000-image test split alone (`--split test`)
    shapes        2,000 RGB JPEG "photos" (mostly 640x480, some portrait or 800x600, a tenth with
                  an EXIF orientation tag): one object of 6 shapes (circle, square, triangle,
                  star, ring, cross) in a random colour, size, place and angle on a textured
                  background (smooth noise, gradient, stripes, checks, blotches)
    shapes-300    300 more of those photos (another seed): a small folder
    fmnist-lt     long-tailed Fashion-MNIST (train split): class sizes fall from 3,000 to 300
                  (ratio 10), the largest class chosen by the seed
    textures      1,200 RGB JPEG photos of 6 texture classes (stripes, checks, dots, rings,
                  grid, blotches) in random colours, scales and angles, under uneven light
    strokes       10,000 28x28 glyphs (L T V Z N O C S X U) drawn as pen strokes with random
                  affine distortion, wobble and pen width: MNIST-like, procedurally
    dev-fmnist, dev-fmnist-lt, dev-fmnist-300, dev-strokes, dev-textures, dev-shapes,
    dev-fmnist-300b, dev-strokes-300, dev-fmnist-100, dev-strokes-100, dev-strokes-lt
                  development sets: dev-fmnist, dev-strokes and dev-textures 2,000 / 2,000 / 300
                  images drawn with seed 1 (another class-balanced Fashion-MNIST train subset,
                  other glyphs, other photos), a long-tailed Fashion-MNIST train draw of 4,085
                  (1,000 to 100 a class, seed 1, no image of fmnist-10k or fmnist-lt), 300
                  balanced Fashion-MNIST train images (seed 4, none of fmnist-300, fmnist-10k or
                  fmnist-lt) and 600 shape photos drawn with seed 2
                  (shapes-300 holds seed 1's); two more small draws with seed 5: 300
                  glyphs, and 300 Fashion-MNIST train images (none of dev-fmnist-300 either);
                  100 glyphs and 100 Fashion-MNIST images (seed 6); 2,800 long-tailed glyphs
                  (1,000 to 20 a class, ratio 50, seed 7). Code
                  defaults are compared on these (and on digits, long used for that); the other
                  sets are for reporting only.

Every generated image depends only on (seed, its index), so a set is reproducible from its
parameters, and a smaller set with the same seed is the start of a larger one.
`--as-folder DIR` also writes a set's images as a folder of PNG or JPEG files, grey or RGB,
optionally scaled up (`--file-size N`) or tinted in two colours an image (`--file-tint`;
`write_as_folder`), to compare the folder loader with the
set's own on the same images.
Fashion-MNIST is read from /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)
or any folder passed as fashion_dir; without it the three fmnist sets raise SuiteDataUnavailable.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

DEFAULT_ROOT = REPO / "bench-out" / "suite-data"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


class SuiteDataUnavailable(RuntimeError):
    """A set that needs files this machine lacks (e.g. Fashion-MNIST not installed)."""


@dataclass(frozen=True)
class SuiteSet:
    """One data set as `otclust fit` is told about it."""

    name: str
    data: str  # --data
    clusters: int  # --clusters (the number of classes: the suite scores against them)
    n_samples: int
    kind: str  # one line for the table's legend
    split: str = "all"  # --split
    is_folder: bool = False  # a folder of photos (the suite may pass --image-size to these only)

    def fit_args(self) -> list[str]:
        args = ["--data", self.data, "--clusters", str(self.clusters)]
        return args + (["--split", self.split] if self.split != "all" else [])


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def cache_key(name: str, params: dict) -> str:
    """A folder name that changes whenever a parameter does, readable in `ls`."""
    parts = [name]
    for key in sorted(params):
        value = params[key]
        if isinstance(value, (tuple, list)):
            value = "x".join(str(v) for v in value)
        parts.append(f"{key}{value}")
    return "-".join(str(p).replace("/", "_").replace(" ", "") for p in parts)


def cached(root: Path, name: str, params: dict, write: Callable[[Path], dict]) -> tuple[Path, dict]:
    """The folder holding set ``name`` built with ``params``; ``write(folder)`` fills it if missing.

    The folder is written under a temporary name and renamed when complete, so an interrupted
    build is never mistaken for a finished one. ``write`` returns facts (e.g. the sample count)
    that are stored in suite.json and returned on later calls without rebuilding.
    """
    final = Path(root) / cache_key(name, params)
    marker = final / "suite.json"
    if marker.is_file():
        return final, json.loads(marker.read_text())["facts"]
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir()
    try:
        facts = write(temp)
        (temp / "suite.json").write_text(json.dumps({"name": name, "params": params, "facts": facts}, indent=2) + "\n")
        if final.exists():  # left by a build that died before writing its marker
            shutil.rmtree(final)
        os.replace(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final, facts


# --------------------------------------------------------------------------------------------
# idx files (what `--data mnist:DIR` / `fashion-mnist:DIR` read)
# --------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx file of uint8 data (images N x H x W, or labels N)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as file:
        file.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        file.write(struct.pack(f">{array.ndim}I", *array.shape))
        file.write(array.tobytes())


def write_idx_train(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """``images`` (N x H x W or N x 1 x H x W uint8) and labels as the train part of an idx folder."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    write_idx(folder / "train-images-idx3-ubyte", images)
    write_idx(folder / "train-labels-idx1-ubyte", np.asarray(labels))


# --------------------------------------------------------------------------------------------
# Fashion-MNIST subsets
# --------------------------------------------------------------------------------------------


def _fashion_spec(fashion_dir: Path | None) -> str:
    directory = Path(fashion_dir) if fashion_dir is not None else FASHION_SYSTEM_DIR
    if not directory.is_dir():
        raise SuiteDataUnavailable(
            f"Fashion-MNIST not found in {directory}: install Debian's dataset-fashion-mnist or pass --fashion-dir"
        )
    return f"fashion-mnist:{directory}"


def _load_fashion(fashion_dir: Path | None, split: str):
    from otclust.data import load_dataset

    return load_dataset(_fashion_spec(fashion_dir), split=split)


def balanced_indices(labels: np.ndarray, n: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
    """``n`` indices, as equal a share of every class as ``n`` allows (the first classes get the
    remainder), drawn without replacement from ``pool`` (a boolean mask; default every sample);
    sorted so the set keeps the source's order."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    base, extra = divmod(n, len(classes))
    keep = []
    for rank, cls in enumerate(classes):
        members = np.flatnonzero((labels == cls) & (True if pool is None else pool))
        count = base + (rank < extra)
        if count > len(members):
            raise ValueError(f"class {cls} has {len(members)} samples, {count} asked")
        keep.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(keep))


def fashion_subset(root: Path, n: int = 10000, seed: int = 0, split: str = "train", avoid: tuple[str, ...] = (), fashion_dir: Path | None = None, name: str = "fmnist-10k") -> SuiteSet:
    """A class-balanced ``n``-image subset of one Fashion-MNIST split, as idx files. ``avoid``:
    suite sets (train subsets) none of whose images may be drawn (`fashion_long_tailed`)."""
    params = {"n": n, "seed": seed, "split": split, **({"avoid": tuple(avoid)} if avoid else {})}

    def write(folder: Path) -> dict:
        source = _load_fashion(fashion_dir, split)
        pool = _pool_without(avoid, source.labels) if avoid else None
        keep = balanced_indices(source.labels, n, seed, pool)
        write_idx_train(folder, source.data.numpy()[keep], source.labels[keep])
        return {"n_samples": int(len(keep))}

    folder, facts = cached(root, name, params, write)
    return SuiteSet(name, f"fashion-mnist:{folder}", 10, facts["n_samples"],
                    f"Fashion-MNIST {split} subset, 28x28 grey, balanced", split="train")  # fmt: skip


def fashion_test_split(root: Path, fashion_dir: Path | None = None, name: str = "fmnist-test") -> SuiteSet:
    """Fashion-MNIST's test split alone, read where it is installed (nothing is written)."""
    spec = _fashion_spec(fashion_dir)
    return SuiteSet(name, spec, 10, 10000, "Fashion-MNIST test split only, 28x28 grey", split="test")


def long_tailed_counts(largest: int, classes: int, ratio: float) -> list[int]:
    """n_c = largest * ratio^(-c/(C-1)): the profile of benchmarks/imbalance.py."""
    return [max(1, int(round(largest * ratio ** (-c / (classes - 1))))) for c in range(classes)]


def long_tailed_indices(labels: np.ndarray, largest: int, ratio: float, seed: int, pool: np.ndarray | None = None) -> tuple[np.ndarray, list[int], list[int]]:
    """Indices of a long-tailed draw (class sizes `long_tailed_counts`; which class is largest
    drawn from ``seed``), taken from ``pool`` (a boolean mask; default every sample), sorted; with
    the classes in size order and their counts."""
    labels = np.asarray(labels)
    pool = np.ones(len(labels), dtype=bool) if pool is None else pool
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))  # classes[0] gets the most samples
    counts = long_tailed_counts(largest, len(classes), ratio)
    keep = np.sort(np.concatenate([
        rng.choice(np.flatnonzero((labels == cls) & pool), size=count, replace=False)
        for cls, count in zip(classes, counts)
    ]))  # fmt: skip
    return keep, [int(c) for c in classes], counts


def train_indices_of(name: str, labels: np.ndarray) -> np.ndarray:
    """The Fashion-MNIST train indices that suite set ``name`` (a balanced or long-tailed train
    subset such as fmnist-10k, fmnist-300 or fmnist-lt, with its SUITE parameters) holds."""
    entry = SUITE[name]
    avoid = entry.params.get("avoid", ())
    pool = _pool_without(avoid, labels) if avoid else None
    if entry.build is fashion_subset:
        return balanced_indices(labels, entry.params["n"], entry.params["seed"], pool)
    if entry.build is fashion_long_tailed:
        return long_tailed_indices(labels, entry.params["largest"], entry.params["ratio"], entry.params["seed"], pool)[0]
    raise ValueError(f"{name!r} is not a Fashion-MNIST train subset")


def _pool_without(avoid: tuple[str, ...], labels: np.ndarray) -> np.ndarray:
    """A mask of the Fashion-MNIST train images that none of the suite sets ``avoid`` holds."""
    pool = np.ones(len(labels), dtype=bool)
    for other in avoid:
        pool[train_indices_of(other, labels)] = False
    return pool


def fashion_long_tailed(root: Path, largest: int = 3000, ratio: float = 10.0, seed: int = 0, avoid: tuple[str, ...] = (), fashion_dir: Path | None = None, name: str = "fmnist-lt") -> SuiteSet:
    """Fashion-MNIST's train split with class sizes falling by ``ratio`` from the largest to the
    smallest; which class is largest is drawn from ``seed`` (not always T-shirt). ``avoid``: suite
    sets (Fashion-MNIST train subsets) none of whose images may be drawn, so a development set
    shares no image with the held-out sets."""
    params = {"largest": largest, "ratio": ratio, "seed": seed, **({"avoid": tuple(avoid)} if avoid else {})}

    def write(folder: Path) -> dict:
        source = _load_fashion(fashion_dir, "train")
        keep, classes, counts = long_tailed_indices(source.labels, largest, ratio, seed, _pool_without(avoid, source.labels))
        write_idx_train(folder, source.data.numpy()[keep], source.labels[keep])
        return {"n_samples": int(len(keep)), "class_sizes": {str(c): int(k) for c, k in zip(classes, counts)}}

    folder, facts = cached(root, name, params, write)
    return SuiteSet(name, f"fashion-mnist:{folder}", 10, facts["n_samples"],
                    f"Fashion-MNIST train, long-tailed {largest}..{largest / ratio:.0f} per class", split="train")  # fmt: skip


# --------------------------------------------------------------------------------------------
# Painted textures (backgrounds of the shapes; the classes of the textures set)
# --------------------------------------------------------------------------------------------


def _colour(rng: np.random.Generator, saturation=(0.2, 1.0), value=(0.15, 1.0)) -> np.ndarray:
    """A random RGB colour (0..255 floats) drawn in HSV, so hue, saturation and brightness vary independently."""
    import colorsys

    h, s, v = rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255


def _pair(rng: np.random.Generator, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """Two colours of a pattern; the second moved only ``contrast`` of the way from the first to
    another random colour, so a pattern can be faint."""
    first, other = _colour(rng), _colour(rng)
    return first, first + contrast * (other - first)


def _coords(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by a random angle about the image centre."""
    angle = rng.uniform(0, math.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = x - w / 2, y - h / 2
    return x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)


def _mix(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """H x W x 3: colour ``b`` where mask is 1, ``a`` where 0 (mask may be soft)."""
    mask = mask[..., None].astype(np.float32)
    return a * (1 - mask) + b * mask


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Values in 0..1 varying smoothly over about ``cell`` pixels (bicubic upsampling of a coarse grid)."""
    from PIL import Image

    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    coarse = rng.uniform(0, 1, size=(gh, gw)).astype(np.float32)
    fine = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC))
    lo, hi = fine.min(), fine.max()
    return (fine - lo) / max(hi - lo, 1e-6)


def paint_noise(rng, h, w, contrast=1.0):
    return _mix(_smooth_noise(rng, h, w, rng.uniform(8, 80)), *_pair(rng, contrast))


def paint_gradient(rng, h, w, contrast=1.0):
    u, _ = _coords(rng, h, w)
    return _mix((u - u.min()) / max(float(u.max() - u.min()), 1e-6), *_pair(rng, contrast))


def paint_stripes(rng, h, w, contrast=1.0):
    u, _ = _coords(rng, h, w)
    period = rng.uniform(0.03, 0.15) * min(h, w)
    return _mix(np.sin(2 * math.pi * u / period) > rng.uniform(-0.5, 0.5), *_pair(rng, contrast))


def paint_checks(rng, h, w, contrast=1.0):
    u, v = _coords(rng, h, w)
    period = rng.uniform(0.04, 0.18) * min(h, w)
    return _mix((np.floor(u / period) + np.floor(v / period)) % 2 == 1, *_pair(rng, contrast))


def paint_dots(rng, h, w, contrast=1.0):
    u, v = _coords(rng, h, w)
    period = rng.uniform(0.05, 0.16) * min(h, w)
    radius = rng.uniform(0.15, 0.4) * period
    du, dv = (u % period) - period / 2, (v % period) - period / 2
    return _mix(du * du + dv * dv < radius * radius, *_pair(rng, contrast))


def paint_rings(rng, h, w, contrast=1.0):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(0.04, 0.14) * min(h, w)
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    return _mix(np.sin(2 * math.pi * r / period) > 0, *_pair(rng, contrast))


def paint_grid(rng, h, w, contrast=1.0):
    u, v = _coords(rng, h, w)
    period = rng.uniform(0.06, 0.2) * min(h, w)
    width = rng.uniform(0.08, 0.2) * period
    return _mix(((u % period) < width) | ((v % period) < width), *_pair(rng, contrast))


def paint_blotches(rng, h, w, contrast=1.0):
    noise = _smooth_noise(rng, h, w, rng.uniform(0.05, 0.15) * min(h, w))
    return _mix(noise > rng.uniform(0.35, 0.65), *_pair(rng, contrast))


BACKGROUNDS = {"noise": paint_noise, "gradient": paint_gradient, "stripes": paint_stripes, "checks": paint_checks, "blotches": paint_blotches}
TEXTURES = {"stripes": paint_stripes, "checks": paint_checks, "dots": paint_dots, "rings": paint_rings, "grid": paint_grid, "blotches": paint_blotches}


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Sensor noise and clipping: uint8 H x W x 3."""
    image = image + rng.normal(0, rng.uniform(1, 8), size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _uneven_light(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """H x W x 1 brightness factors 0.55..1.15, smooth: the light falls unevenly on the scene."""
    light = _smooth_noise(rng, h, w, rng.uniform(0.3, 1.0) * min(h, w))
    return (0.55 + 0.6 * light)[..., None]


# --------------------------------------------------------------------------------------------
# Shapes on backgrounds, and textures: folders of photo-sized JPEGs
# --------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
# Part of the cache key: raise it whenever draw_shape_photo changes what it draws.
SHAPES_VERSION = 2


def _polygon(centre, radius, angle, radii, turns) -> list[tuple[float, float]]:
    """Vertices at ``radii[i]`` x ``radius`` from the centre, at angle + turns[i] (radians)."""
    cx, cy = centre
    return [(cx + r * radius * math.cos(angle + t), cy + r * radius * math.sin(angle + t)) for r, t in zip(radii, turns)]


def shape_mask(shape: str, h: int, w: int, centre: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """H x W float mask (1 inside) of one shape of circumradius ``radius``."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = centre
    if shape in ("circle", "ring"):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
        if shape == "ring":
            inner = 0.55 * radius
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif shape == "square":
        draw.polygon(_polygon(centre, radius, angle, [1] * 4, [math.pi / 4 + k * math.pi / 2 for k in range(4)]), fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(centre, radius, angle, [1] * 3, [k * 2 * math.pi / 3 for k in range(3)]), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(centre, radius, angle, [1, 0.42] * 5, [k * math.pi / 5 for k in range(10)]), fill=255)
    elif shape == "cross":
        a = 0.33  # half the arm width, as a fraction of the radius
        corners = [(1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a), (-a, -1), (a, -1), (a, -a), (1, -a)]
        radii = [math.hypot(x, y) for x, y in corners]
        turns = [math.atan2(y, x) for x, y in corners]
        draw.polygon(_polygon(centre, radius, angle, radii, turns), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")
    return np.asarray(mask, dtype=np.float32) / 255


def _photo_size(rng: np.random.Generator, size: tuple[int, int], mixed: bool) -> tuple[int, int]:
    """(height, width): ``size`` (W x H) mostly; with ``mixed`` a tenth portrait and a tenth 1.25x larger."""
    w, h = size
    draw = rng.uniform() if mixed else 0.0
    if draw > 0.9:
        return w, h  # portrait: the same photo turned
    if draw > 0.8:
        return int(h * 1.25), int(w * 1.25)
    return h, w


def _salient_colour(rng: np.random.Generator, away_from: np.ndarray, tries: int = 20) -> np.ndarray:
    """A random colour at least 100 (of 441) RGB units from ``away_from``, or the farthest of ``tries`` draws."""
    best, best_distance = None, -1.0
    for _ in range(tries):
        colour = _colour(rng, saturation=(0.3, 1.0), value=(0.3, 1.0))
        distance = float(np.linalg.norm(colour - away_from))
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= 100:
            break
    return best


def draw_shape_photo(seed: int, index: int, size=(640, 480), mixed: bool = True, scene: dict | None = None) -> tuple[np.ndarray, int]:
    """Photo ``index`` of the shapes set: (uint8 H x W x 3, class). Depends on (seed, index) only.

    ``scene``, when given, receives what else was drawn (the nuisances a network may learn
    instead of the shape): background kind and contrast, object colour (RGB 0..255) and radius
    (a share of the shorter side)."""
    rng = np.random.default_rng([seed, index])
    label = index % len(SHAPES)
    h, w = _photo_size(rng, size, mixed)
    # The background is busy but fainter than the object, as behind the subject of a photo.
    background_kind = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    background_contrast = rng.uniform(0.15, 0.5)
    background = BACKGROUNDS[background_kind](rng, h, w, background_contrast)
    side = min(h, w)
    radius = rng.uniform(0.15, 0.35) * side
    # The object stays inside the central square, so cropping to any aspect keeps it whole.
    reach = side / 2 - radius
    centre = (w / 2 + rng.uniform(-reach, reach), h / 2 + rng.uniform(-reach, reach))
    mask = shape_mask(SHAPES[label], h, w, centre, radius, rng.uniform(0, 2 * math.pi))
    colour = _salient_colour(rng, background.reshape(-1, 3).mean(axis=0))
    shading = 0.8 + 0.35 * _smooth_noise(rng, h, w, radius)[..., None]  # the object is not flat-lit
    image = _mix(mask, background, colour * shading)
    if scene is not None:
        scene.update(background=background_kind, background_contrast=background_contrast, colour=colour.tolist(), radius=radius / side)
    return _finish(rng, image * _uneven_light(rng, h, w)), label


def draw_texture_photo(seed: int, index: int, size=(640, 480)) -> tuple[np.ndarray, int]:
    """Photo ``index`` of the textures set: (uint8 H x W x 3, class). Depends on (seed, index) only."""
    rng = np.random.default_rng([seed, index])
    label = index % len(TEXTURES)
    w, h = size
    image = TEXTURES[list(TEXTURES)[label]](rng, h, w)
    return _finish(rng, image * _uneven_light(rng, h, w)), label


def save_jpeg(path: Path, image: np.ndarray, rng: np.random.Generator, exif_fraction: float) -> None:
    """A JPEG of random quality; with probability ``exif_fraction`` the pixels are stored turned
    by 90 degrees with the EXIF orientation tag that turns them back (as phones do)."""
    from PIL import Image

    picture = Image.fromarray(image)
    quality = int(rng.integers(75, 96))
    if rng.uniform() < exif_fraction:
        exif = Image.Exif()
        if rng.uniform() < 0.5:
            exif[0x0112] = 6  # viewer turns 90 degrees clockwise
            picture = picture.transpose(Image.Transpose.ROTATE_90)
        else:
            exif[0x0112] = 8  # viewer turns 90 degrees anticlockwise
            picture = picture.transpose(Image.Transpose.ROTATE_270)
        picture.save(path, quality=quality, exif=exif)
    else:
        picture.save(path, quality=quality)


def write_photo_folder(folder: Path, draw: Callable[[int], tuple[np.ndarray, int]], n: int, class_names: tuple[str, ...], seed: int, exif_fraction: float) -> dict:
    """``n`` photos from ``draw(index)`` as folder/CLASS/NNNNN.jpg."""
    for name in class_names:
        (folder / name).mkdir()
    sizes: dict[str, int] = {}
    for index in range(n):
        image, label = draw(index)
        rng = np.random.default_rng([seed, index, 1])  # the file's own draws: not the picture's
        save_jpeg(folder / class_names[label] / f"{index:05d}.jpg", image, rng, exif_fraction)
        key = f"{image.shape[1]}x{image.shape[0]}"
        sizes[key] = sizes.get(key, 0) + 1
    return {"n_samples": n, "sizes": sizes}


def shapes(root: Path, n: int = 2000, seed: int = 0, size=(640, 480), mixed: bool = True, exif_fraction: float = 0.1, name: str = "shapes") -> SuiteSet:
    """``n`` photos of one coloured shape on a textured background, as a folder of JPEGs."""
    params = {"n": n, "seed": seed, "size": list(size), "mixed": int(mixed), "exif": exif_fraction, "v": SHAPES_VERSION}

    def write(folder: Path) -> dict:
        return write_photo_folder(folder, lambda i: draw_shape_photo(seed, i, size, mixed), n, SHAPES, seed, exif_fraction)

    folder, facts = cached(root, name, params, write)
    return SuiteSet(name, f"folder:{folder}", len(SHAPES), facts["n_samples"],
                    f"RGB JPEG photos {size[0]}x{size[1]} (mixed sizes), {len(SHAPES)} shapes on textures",
                    is_folder=True)  # fmt: skip


def textures(root: Path, n: int = 1200, seed: int = 0, size=(640, 480), name: str = "textures") -> SuiteSet:
    """``n`` photos of 6 texture classes in random colours, scales and angles, as JPEGs."""
    params = {"n": n, "seed": seed, "size": list(size)}

    def write(folder: Path) -> dict:
        return write_photo_folder(folder, lambda i: draw_texture_photo(seed, i, size), n, tuple(TEXTURES), seed, 0.0)

    folder, facts = cached(root, name, params, write)
    return SuiteSet(name, f"folder:{folder}", len(TEXTURES), facts["n_samples"],
                    f"RGB JPEG photos {size[0]}x{size[1]}, {len(TEXTURES)} texture classes", is_folder=True)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Strokes: MNIST-like glyphs drawn with a pen
# --------------------------------------------------------------------------------------------


def _arc(cx, cy, rx, ry, start, stop, points=16):
    t = np.linspace(math.radians(start), math.radians(stop), points)
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


def _s_curve(points=20):
    y = np.linspace(0.15, 0.85, points)
    return list(zip(0.5 - 0.25 * np.sin(2 * math.pi * (y - 0.15) / 0.7), y))


# Each glyph: strokes, each a polyline in the unit square (x right, y down).
GLYPHS: dict[str, list[list[tuple[float, float]]]] = {
    "L": [[(0.3, 0.15), (0.3, 0.85), (0.75, 0.85)]],
    "T": [[(0.2, 0.15), (0.8, 0.15)], [(0.5, 0.15), (0.5, 0.85)]],
    "V": [[(0.2, 0.15), (0.5, 0.85), (0.8, 0.15)]],
    "Z": [[(0.2, 0.15), (0.8, 0.15), (0.2, 0.85), (0.8, 0.85)]],
    "N": [[(0.25, 0.85), (0.25, 0.15), (0.75, 0.85), (0.75, 0.15)]],
    "O": [_arc(0.5, 0.5, 0.28, 0.36, 0, 360, 24)],
    "C": [_arc(0.55, 0.5, 0.3, 0.36, 45, 315, 20)],
    "S": [_s_curve()],
    "X": [[(0.2, 0.15), (0.8, 0.85)], [(0.8, 0.15), (0.2, 0.85)]],
    "U": [[(0.25, 0.15), (0.25, 0.6)] + _arc(0.5, 0.6, 0.25, 0.25, 180, 0, 12)[1:] + [(0.75, 0.15)]],
}


def _densify(points: np.ndarray, step: float = 0.04) -> np.ndarray:
    """Points every ``step`` along a polyline, so that wobble bends lines instead of moving corners only."""
    out = [points[0]]
    for a, b in zip(points[:-1], points[1:]):
        pieces = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        out.extend(a + (b - a) * t for t in np.linspace(0, 1, pieces + 1)[1:])
    return np.array(out)


def draw_stroke_glyph(seed: int, index: int, size: int = 28, scale: int = 4) -> tuple[np.ndarray, int]:
    """Glyph ``index`` of the strokes set: (uint8 size x size, white on black, class)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index])
    names = list(GLYPHS)
    label = index % len(names)
    angle = math.radians(rng.uniform(-15, 15))
    shear = rng.uniform(-0.3, 0.3)
    sx, sy = rng.uniform(0.75, 1.1), rng.uniform(0.8, 1.1)
    rotate = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    affine = rotate @ np.array([[1, shear], [0, 1]]) @ np.diag([sx, sy])
    shift = rng.uniform(-0.07, 0.07, size=2)
    big = size * scale
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(1, int(round(rng.uniform(1.4, 3.2) * scale)))
    for stroke in GLYPHS[names[label]]:
        points = _densify(np.array(stroke, dtype=np.float64))
        # Wobble: a smooth random displacement along the stroke (a running mean of white noise).
        wobble = rng.normal(0, 0.03, size=points.shape)
        kernel = np.ones(5) / 5
        wobble = np.stack([np.convolve(wobble[:, d], kernel, mode="same") for d in range(2)], axis=1)
        points = (points - 0.5 + wobble) @ affine.T + 0.5 + shift
        pixels = [(float(x * big), float(y * big)) for x, y in points]
        draw.line(pixels, fill=255, width=width, joint="curve")
        for x, y in (pixels[0], pixels[-1]):  # round pen ends
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255)
    return np.asarray(canvas.resize((size, size), Image.BOX)), label


def strokes(root: Path, n: int = 10000, seed: int = 0, name: str = "strokes") -> SuiteSet:
    """``n`` 28x28 pen-stroke glyphs of 10 classes, as idx files (read as `mnist:DIR`)."""
    params = {"n": n, "seed": seed}

    def write(folder: Path) -> dict:
        drawn = [draw_stroke_glyph(seed, i) for i in range(n)]
        write_idx_train(folder, np.stack([d[0] for d in drawn]), np.array([d[1] for d in drawn]))
        return {"n_samples": n}

    folder, facts = cached(root, name, params, write)
    return SuiteSet(name, f"mnist:{folder}", len(GLYPHS), facts["n_samples"],
                    "28x28 grey pen-stroke glyphs (procedural), 10 classes", split="train")  # fmt: skip


def strokes_long_tailed(root: Path, largest: int = 1000, ratio: float = 50.0, seed: int = 7, name: str = "strokes-lt") -> SuiteSet:
    """Pen-stroke glyphs with class sizes falling by ``ratio`` from the largest to the smallest
    (the profile of `long_tailed_counts`); which class is largest is drawn from ``seed``, and the
    glyphs are those of `strokes` with that seed (glyph i is of class i mod 10)."""
    params = {"largest": largest, "ratio": ratio, "seed": seed}

    def write(folder: Path) -> dict:
        classes = np.random.default_rng(seed).permutation(len(GLYPHS))  # classes[0] gets the most
        counts = long_tailed_counts(largest, len(GLYPHS), ratio)
        indices = sorted(int(cls) + len(GLYPHS) * j for cls, count in zip(classes, counts) for j in range(count))
        drawn = [draw_stroke_glyph(seed, i) for i in indices]
        write_idx_train(folder, np.stack([d[0] for d in drawn]), np.array([d[1] for d in drawn]))
        return {"n_samples": len(indices), "class_sizes": {str(c): int(k) for c, k in zip(classes, counts)}}

    folder, facts = cached(root, name, params, write)
    return SuiteSet(name, f"mnist:{folder}", len(GLYPHS), facts["n_samples"],
                    f"28x28 pen-stroke glyphs, long-tailed {largest}..{largest / ratio:.0f} per class", split="train")  # fmt: skip


def digits(root: Path, name: str = "digits") -> SuiteSet:
    return SuiteSet(name, "digits", 10, 1797, "scikit-learn digits, 8x8 grey (bundled)")


# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteEntry:
    build: Callable[..., SuiteSet]
    params: dict = field(default_factory=dict)
    needs_fashion: bool = False


SUITE: dict[str, SuiteEntry] = {
    "digits": SuiteEntry(digits),
    "fmnist-10k": SuiteEntry(fashion_subset, {"n": 10000, "seed": 0, "split": "train"}, needs_fashion=True),
    "fmnist-test": SuiteEntry(fashion_test_split, needs_fashion=True),
    "shapes": SuiteEntry(shapes, {"n": 2000, "seed": 0}),
    "shapes-300": SuiteEntry(shapes, {"n": 300, "seed": 1}),
    "fmnist-lt": SuiteEntry(fashion_long_tailed, {"largest": 3000, "ratio": 10.0, "seed": 0}, needs_fashion=True),
    "textures": SuiteEntry(textures, {"n": 1200, "seed": 0}),
    "strokes": SuiteEntry(strokes, {"n": 10000, "seed": 0}),
    # A few hundred small grey images (added 2026-12-04): is a small N itself a problem, apart
    # from photos? Drawn with seed 3, which no other set uses.
    "fmnist-300": SuiteEntry(fashion_subset, {"n": 300, "seed": 3, "split": "train"}, needs_fashion=True),
    "strokes-300": SuiteEntry(strokes, {"n": 300, "seed": 3}),
    # Development sets: small, drawn with other seeds than the sets above, and the only ones on
    # which code defaults may be compared by score (docs/results.md section 3 says which).
    "dev-fmnist": SuiteEntry(fashion_subset, {"n": 2000, "seed": 1, "split": "train"}, needs_fashion=True),
    "dev-strokes": SuiteEntry(strokes, {"n": 2000, "seed": 1}),
    "dev-textures": SuiteEntry(textures, {"n": 300, "seed": 1}),
    "dev-shapes": SuiteEntry(shapes, {"n": 600, "seed": 2}),
    # No image of the held-out Fashion-MNIST train sets: choices made on it cannot have seen them.
    "dev-fmnist-lt": SuiteEntry(fashion_long_tailed, {"largest": 1000, "ratio": 10.0, "seed": 1, "avoid": ("fmnist-10k", "fmnist-lt")}, needs_fashion=True),
    # The development twin of fmnist-300 (added 2026-12-05): a few hundred images, none of a
    # held-out train subset.
    "dev-fmnist-300": SuiteEntry(fashion_subset, {"n": 300, "seed": 4, "split": "train", "avoid": ("fmnist-300", "fmnist-10k", "fmnist-lt")}, needs_fashion=True),
    # Two more small sets (added 2026-12-05) to check on fresh draws a setting first seen to help
    # on dev-fmnist-300 (results.md 3.1): other glyphs, and 300 other Fashion-MNIST images.
    "dev-strokes-300": SuiteEntry(strokes, {"n": 300, "seed": 5}),
    "dev-fmnist-300b": SuiteEntry(fashion_subset, {"n": 300, "seed": 5, "split": "train", "avoid": ("fmnist-300", "fmnist-10k", "fmnist-lt", "dev-fmnist-300")}, needs_fashion=True),
    # Sets smaller than one batch (added 2026-12-06), where the budget's floor decides the run's
    # length: ten images a class.
    "dev-strokes-100": SuiteEntry(strokes, {"n": 100, "seed": 6}),
    "dev-fmnist-100": SuiteEntry(fashion_subset, {"n": 100, "seed": 6, "split": "train", "avoid": ("fmnist-300", "fmnist-10k", "fmnist-lt", "dev-fmnist-300", "dev-fmnist-300b")}, needs_fashion=True),
    # A second long tail (added 2026-12-06), of another kind and steeper than dev-fmnist-lt's
    # (ratio 50: 1,000 glyphs of the largest class, 20 of the smallest), for choosing how
    # unknown cluster sizes are handled.
    "dev-strokes-lt": SuiteEntry(strokes_long_tailed, {"largest": 1000, "ratio": 50.0, "seed": 7}),
}

# The development sets as a group (`--datasets dev` in benchmarks/generalization.py).
DEV_SETS = ("dev-fmnist", "dev-fmnist-lt", "dev-fmnist-300", "dev-fmnist-300b", "dev-fmnist-100", "dev-strokes", "dev-strokes-300", "dev-strokes-100", "dev-strokes-lt", "dev-textures", "dev-shapes")


def build(name: str, root: Path = DEFAULT_ROOT, fashion_dir: Path | None = None, **overrides) -> SuiteSet:
    """Set ``name`` of SUITE (built into ``root`` if not cached), with its parameters overridden
    by ``overrides`` (e.g. n=60 for a quick test)."""
    if name not in SUITE:
        raise KeyError(f"unknown suite set {name!r}: one of {', '.join(SUITE)}")
    entry = SUITE[name]
    kwargs = {**entry.params, **overrides, "name": name}
    if entry.needs_fashion:
        kwargs["fashion_dir"] = fashion_dir
    return entry.build(Path(root), **kwargs)


TINT_SEED = 12  # any fixed number: the tints are part of a written folder's content


def tinted(picture, index: int):
    """A grey PIL picture as RGB: white becomes a bright colour and black a dark one (any hue and
    saturation), drawn from ``index`` alone, so the same picture always gets the same two and
    its shape stays as legible as in grey."""
    from PIL import Image

    rng = np.random.default_rng([TINT_SEED, index])
    ink, background = _colour(rng, value=(0.6, 1.0)), _colour(rng, value=(0.0, 0.35))
    grey = np.asarray(picture.convert("L"), dtype=np.float32)[..., None] / 255.0
    return Image.fromarray(np.round(grey * ink + (1 - grey) * background).astype(np.uint8), "RGB")



def write_as_folder(suite_set: SuiteSet, dest: Path, mode: str = "L", extension: str = "png", size: int | None = None, tint: bool = False) -> Path:
    """The set's images as a folder of files, one subfolder per class (``class0``, ...), in PIL
    ``mode`` (L or RGB: grey pictures saved as colour files, as many tools save them) and format
    ``extension`` (png, or jpg at quality 90), so that the folder path can be compared with the
    loader the suite names, on the same images. ``size``: each image scaled (bicubic) to size x
    size first, as larger pictures of the same content. ``tint``: each grey picture painted in two
    colours of its own (RGB files, whatever ``mode``) (ink and background, drawn from the image's index), so that the folder
    loader sees colour and trains with its colour preset on the same shapes. ``dest`` must not exist."""
    from PIL import Image

    from otclust.data import load_dataset

    if mode not in ("L", "RGB") or extension not in ("png", "jpg"):
        raise ValueError(f"mode L or RGB and extension png or jpg, not {mode!r} / {extension!r}")
    dataset = load_dataset(suite_set.data, split=suite_set.split)
    dest = Path(dest)
    dest.mkdir(parents=True)  # never into an existing folder: nothing of anyone's is overwritten
    images = dataset.data.numpy().transpose(0, 2, 3, 1)
    for i, (image, label) in enumerate(zip(images, dataset.labels)):
        folder = dest / f"class{label}"
        folder.mkdir(exist_ok=True)
        picture = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        if size is not None:
            picture = picture.resize((size, size), Image.BICUBIC)
        picture = tinted(picture, i) if tint else picture.convert(mode)
        picture.save(folder / f"{i:05d}.{extension}", **({"quality": 90} if extension == "jpg" else {}))
    return dest


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(SUITE), help="comma-separated names (default: all)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="cache folder (default: %(default)s)")
    parser.add_argument("--fashion-dir", type=Path, default=None, help=f"Fashion-MNIST idx folder (default: {FASHION_SYSTEM_DIR})")
    parser.add_argument("--as-folder", type=Path, default=None, metavar="DIR",
                        help="also write each set's images into DIR/NAME, one subfolder per class (DIR/NAME must not exist)")
    parser.add_argument("--file-mode", choices=("L", "RGB"), default="L", help="mode of the written files (default: %(default)s)")
    parser.add_argument("--file-format", choices=("png", "jpg"), default="png", help="format of the written files (default: %(default)s)")
    parser.add_argument("--file-tint", action="store_true", help="paint each grey picture in two random colours of its own (RGB files)")
    parser.add_argument("--file-size", type=int, default=None, metavar="N", help="scale each written image to N x N pixels (default: as stored)")
    args = parser.parse_args()
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        try:
            s = build(name, args.root, args.fashion_dir)
        except SuiteDataUnavailable as error:
            print(f"{name}: unavailable: {error}")
            continue
        print(f"{name}: {s.n_samples} samples, K={s.clusters}, otclust fit {' '.join(s.fit_args())}")
        if args.as_folder is not None:
            folder = write_as_folder(s, args.as_folder / name, args.file_mode, args.file_format, args.file_size, args.file_tint)
            print(f"{name}: written as {args.file_mode} {args.file_format} files: otclust fit --data folder:{folder} --clusters {s.clusters}")


if __name__ == "__main__":
    main()

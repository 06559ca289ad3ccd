"""Decoding a folder of photo-sized JPEGs: otclust's folder loader against torchvision's
ImageFolder + DataLoader, same worker count, same target size, in one run.

    PYTHONPATH=src python benchmarks/decode.py                  # 2000 photos of 1600x1200, 2 workers, 64 px
    PYTHONPATH=src python benchmarks/decode.py --images 500 --workers 4 --size 96
    PYTHONPATH=src python benchmarks/decode.py --format heic --images 200   # needs pillow-heif

``--format heic`` writes the same photos as HEIC files with a 320-pixel thumbnail embedded, as
phones store one, and compares otclust's loader decoding that thumbnail (its default) with the
same loader decoding every photo in full (pillow-heif's thumbnails switched off); torchvision's
ImageFolder lists no HEIC files, so it has no row there.

The photos are generated once (10 class folders of smooth colour fields with shapes and noise,
every fifth saved with an EXIF orientation tag of 6, i.e. to be shown rotated) into
``--photos DIR`` (default ``$OTCLUST_CACHE/bench-photos-N``, else ``~/.cache/otclust/...``) and
kept for later runs. Each contestant runs in a fresh Python process, so that its peak memory
(``resource.getrusage``: the main process, and the largest worker) is its own. Both produce
the whole set as one uint8 N x 3 x S x S array:

* otclust: ``load_dataset("folder:DIR", image_size=S)`` with the cache off: JPEG draft
  decoding, EXIF rotation, shorter side to S and centre crop, ``--workers`` processes.
* torchvision: ``ImageFolder(DIR, Resize(S) + CenterCrop(S) + PILToTensor())`` in a
  ``DataLoader(batch_size=64, num_workers=W)``, batches copied into a preallocated array. Its
  default loader decodes every JPEG at full size and ignores EXIF orientation.
* otclust, cached: the same call a second time with the cache on, i.e. what ``predict``,
  ``report`` and ``compare`` pay after ``fit`` has decoded the folder once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def default_photo_dir(n: int, kind: str = "photos") -> Path:
    base = os.environ.get("OTCLUST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "otclust"
    )
    return Path(base) / f"bench-{kind}-{n}"


def _make_photo(args) -> None:
    """A 1600x1200 'photo': a smooth colour field of the class's hue, a bright disc, fine noise."""
    from PIL import Image, ImageDraw

    path, label, seed, width, height = args
    rng = np.random.default_rng(seed)
    hue = np.array([[255, 60, 40], [40, 200, 60], [50, 80, 255], [240, 220, 40], [200, 60, 220],
                    [40, 220, 220], [255, 140, 20], [120, 120, 120], [150, 90, 40], [250, 250, 250]], np.float32)[label]  # fmt: skip
    small = rng.normal(0, 35, (12, 16, 3)).astype(np.float32) + hue * rng.uniform(0.6, 1.0)
    image = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    cx, cy, r = rng.integers(300, width - 300), rng.integers(300, height - 300), rng.integers(80, 250)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in 255 - hue))
    arr = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    save = {"quality": 90}
    if seed % 5 == 0:
        exif = Image.Exif()
        exif[0x0112] = 6
        save["exif"] = exif
    if path.suffix == ".heic":
        import pillow_heif

        pillow_heif.register_heif_opener()
        save["thumbnails"] = [320]  # the longer side of the thumbnail an iPhone embeds
    image.save(path, **save)


def generate(root: Path, n: int, workers: int, size=(1600, 1200), classes: int = 10, suffix: str = ".jpg") -> None:
    marker = root / ".complete"
    if marker.exists():
        return
    jobs = []
    for i in range(n):
        label = i % classes
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:05d}{suffix}", label, i, *size))
    from concurrent.futures import ProcessPoolExecutor

    started = time.perf_counter()
    print(f"generating {n} photos of {size[0]}x{size[1]} in {root} ...", file=sys.stderr, flush=True)
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_make_photo, jobs, chunksize=16))
    marker.write_text("done")
    print(f"generated in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Contestants (each run in its own process: `--run NAME`)
# --------------------------------------------------------------------------------------------


def run_otclust(root: Path, size: int, workers: int, cache: bool, cache_dir: str, thumbnails: bool = True) -> dict:
    from otclust.data import load_dataset
    from otclust.data.decode import SETTINGS

    if not thumbnails:
        import pillow_heif

        pillow_heif.options.THUMBNAILS = False  # read by the forked workers too

    SETTINGS.workers, SETTINGS.cache, SETTINGS.cache_dir, SETTINGS.progress = workers, cache, cache_dir, False
    SETTINGS.cache_min_images = 0
    started = time.perf_counter()
    dataset = load_dataset(f"folder:{root}", image_size=size)
    seconds = time.perf_counter() - started
    checksum = int(dataset.data[:, :, ::7, ::7].sum())  # touch the data (a mapped cache is read)
    return {"images": dataset.n_samples, "seconds": seconds, "shape": list(dataset.data.shape), "checksum": checksum}


def run_torchvision(root: Path, size: int, workers: int) -> dict:
    import types

    import torch
    from torch.utils.data import DataLoader

    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        # A torchvision whose compiled operators do not match the installed torch (seen with
        # torchvision 0.28 + torch 2.13 CPU: "operator torchvision::nms does not exist") fails
        # in the module that registers those operators; ImageFolder and the transforms are
        # pure Python and need none of them, so that module is skipped.
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    started = time.perf_counter()
    folder = datasets.ImageFolder(str(root), transform=transform)
    out = torch.empty((len(folder), 3, size, size), dtype=torch.uint8)
    loader = DataLoader(folder, batch_size=64, num_workers=workers, shuffle=False)
    at = 0
    for images, _ in loader:
        out[at : at + len(images)] = images
        at += len(images)
    seconds = time.perf_counter() - started
    return {"images": at, "seconds": seconds, "shape": list(out.shape), "checksum": int(out[:, :, ::7, ::7].sum())}


def peak_memory() -> dict:
    """Peak resident set of this process and of its largest child (Linux: kB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"peak_rss_main": own, "peak_rss_worker": children}


def contestant(args) -> None:
    import torch

    torch.set_num_threads(1)
    if args.run == "torchvision":
        result = run_torchvision(Path(args.photos), args.size, args.workers)
    else:
        cached, thumbnails = args.run == "otclust-cached", args.run != "otclust-full"
        result = run_otclust(Path(args.photos), args.size, args.workers, cache=cached, cache_dir=args.cache_dir, thumbnails=thumbnails)
    result.update(peak_memory())
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--photos", default=None, help="folder of generated photos (made if missing)")
    parser.add_argument("--format", choices=("jpeg", "heic"), default="jpeg", help="file format of the generated photos")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        contestant(args)
        return
    heic = args.format == "heic"
    photos = Path(args.photos) if args.photos else default_photo_dir(args.images, "heic" if heic else "photos")
    generate(photos, args.images, args.workers, suffix=".heic" if heic else ".jpg")
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        # the cached row needs the entry written first: the first otclust-cached run writes it
        first = [("otclust-full", "otclust folder loader, every HEIC decoded in full"), ("otclust", "otclust folder loader (the embedded thumbnail)")] if heic else \
                [("torchvision", "torchvision ImageFolder + DataLoader"), ("otclust", "otclust folder loader")]  # fmt: skip
        plan = [*first, ("otclust-cached", None), ("otclust-cached", "otclust, reusing its decoded-image cache")]
        for run, label in plan:
            command = [sys.executable, __file__, "--run", run, "--photos", str(photos), "--size", str(args.size),
                       "--workers", str(args.workers), "--cache-dir", cache_dir]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode != 0:
                sys.exit(f"{run} failed:\n{done.stderr}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if label is not None:
                rows.append((label, result))
    kind = "HEICs (a 320-pixel thumbnail each)" if heic else "JPEGs"
    print(f"{args.images} {kind} of 1600x1200 (every fifth EXIF-rotated) -> uint8 N x 3 x {args.size} x {args.size}, {args.workers} workers\n")
    print("| loader | images | seconds | images/s | peak RSS, main process | peak RSS, largest worker |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, r in rows:
        print(
            f"| {label} | {r['images']} | {r['seconds']:.1f} | {r['images'] / r['seconds']:.0f} | "
            f"{r['peak_rss_main'] / 2**20:.0f} MiB | {r['peak_rss_worker'] / 2**20:.0f} MiB |"
        )


if __name__ == "__main__":
    main()

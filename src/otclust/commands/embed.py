"""otclust embed: run a data set through a frozen pretrained backbone once and cache the result."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from otclust.commands.common import HelpFormatter, add_data_options
from otclust.config import check_otclust_weights
from otclust.data import load_dataset
from otclust.data.embeddings import embed_dataset, features_file_paths, write_features_file
from otclust.distributed import select_device
from otclust.errors import UserError
from otclust.models.pretrained import is_pretrained, load_extractor
from otclust.runs import check_output_files


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="embed a data set with a frozen pretrained backbone (cached with its kNN graph; fit reuses it)",
        description=(
            "Run every image of --data through a frozen pretrained backbone (its own preprocessing, batched, with a "
            "progress bar in images/s) and store the embeddings and their nearest-neighbour graph in otclust's cache, "
            "where 'otclust fit --backbone B' with the same data and weights finds them (the command it prints). --out also "
            "writes them as FILE.npy (+ FILE.labels.npy, FILE.knn.npy, FILE.json) for other tools; as --data features:FILE.npy "
            "fit clusters them as plain feature vectors, without the kNN graph and the frozen-feature settings. See docs/pretrained.md."
        ),
        formatter_class=HelpFormatter,
    )
    add_data_options(parser)
    parser.add_argument("--backbone", required=True, metavar="LIBRARY:NAME", help="timm:NAME, torchvision:NAME or otclust:RUN/model.pt")
    parser.add_argument("--weights", default=None, metavar="PATH", help="weights file (default: the library's local cache; --download fetches them)")
    parser.add_argument("--out", default=None, metavar="FILE.npy", help="also write the embeddings to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace --out and its side files (.labels.npy, .knn.npy, .json) if they exist")
    parser.add_argument("--neighbors", type=int, default=50, help="neighbours per image in the cached kNN graph (0: none)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args) -> int:
    if not is_pretrained(args.backbone):
        raise UserError(f"--backbone must be timm:NAME, torchvision:NAME or otclust:RUN/model.pt, got '{args.backbone}'")
    if args.batch_size < 1 or args.neighbors < 0:
        raise UserError(f"--batch-size must be at least 1 and --neighbors at least 0, got {args.batch_size} and {args.neighbors}")
    no_cache = args.cache is False  # --no-cache (a data option): neither the decoded-image nor the embedding cache
    if no_cache and not args.out:
        raise UserError("--no-cache keeps nothing without --out FILE.npy")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.suffix != ".npy":
            raise UserError(f"--out must name a .npy file, got {out}")
        # The side files too: features:OUT.npy reads OUT.labels.npy beside it, so each is the user's to keep.
        check_output_files(list(features_file_paths(out).values()), args.overwrite, ".npy")
    check_otclust_weights(args.backbone, args.weights)  # before any work, as fit's config does
    extractor = load_extractor(args.backbone, args.weights, download=bool(args.download))
    # Decoded at the backbone's own working resolution, as fit --backbone decodes them: the same
    # pixels, so the same cache entry.
    dataset = load_dataset(args.data or "digits", split=args.split or "all", download=bool(args.download), image_size=args.image_size, backbone=args.backbone)
    for note in dataset.notes:  # skipped and ignored files, the working resolution: as fit says them
        if not note.endswith("evaluation skipped"):  # embed does not evaluate: nothing is skipped
            print(f"note: {note}", file=sys.stderr, flush=True)
    embeddings = embed_dataset(
        dataset, extractor, select_device(args.device), batch_size=args.batch_size, neighbors=args.neighbors, progress=not args.no_progress, use_cache=not no_cache
    )
    meta = embeddings.meta
    speed = " (from the cache)" if embeddings.from_cache else f" at {meta['images_per_second']:.1f} images/s"
    print(f"{len(embeddings.features)} x {embeddings.features.shape[1]} embeddings of {dataset.name} by {args.backbone}{speed}")
    if out is not None:
        written = write_features_file(out, embeddings, dataset.labels)
        for path in written:
            print(f"written: {path}")
        # Under --overwrite, an earlier set's labels or kNN graph that this one has none of would be
        # read with the new features (features:OUT.npy picks up OUT.labels.npy): they go too.
        for path in features_file_paths(out).values():
            if path not in written and path.exists():
                path.unlink()
                print(f"removed: {path} (of the replaced embeddings)")
    # The --backbone form, not features:OUT.npy: fit reads a features file as plain vectors (no kNN
    # graph, CLOT's ordinary settings and full budget), a different and slower run than the one
    # docs/pretrained.md measured.
    source = "embeds them again: --no-cache kept no copy" if no_cache else "reads them and their kNN graph from the cache"
    print(f"cluster them with: {fit_command(args)}    ({source}; CLOT with the frozen-feature settings, docs/pretrained.md)")
    if out is not None:
        print(f"      (--data features:{out} clusters them as plain feature vectors: no kNN graph, no frozen-feature settings)")
    return 0


def fit_command(args) -> str:
    """The fit that clusters what embed just embedded as fit --backbone would: the same data,
    split, image size, backbone and weights, so the same cache entry and kNN graph, and CLOT's
    frozen-feature settings and short budget, which fit gives a pretrained --backbone only (a
    features:FILE.npy is plain vectors to it)."""
    words = ["otclust", "fit", "--data", args.data or "digits"]
    if args.split:
        words += ["--split", args.split]
    if args.image_size:
        words += ["--image-size", str(args.image_size)]
    words += ["--backbone", args.backbone]
    if args.weights:
        words += ["--weights", args.weights]
    return shlex.join(words) + " --clusters K"

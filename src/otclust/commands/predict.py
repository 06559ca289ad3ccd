"""otclust predict: assign new images (or feature vectors) to the clusters of a trained model."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
import unicodedata
from pathlib import Path

import numpy as np

from otclust.commands.common import add_data_options, add_readout_option, add_weights_option
from otclust.data import conform, load_dataset, parse_spec
from otclust.data.embeddings import features_file_paths, features_for_model
from otclust.engine import load_trained, predict_in_batches, select_device
from otclust.errors import UserError
from otclust.models.pretrained import is_pretrained, refuse_unused_weights
from otclust.ot import sinkhorn
from otclust.ot.priors import match_prior_to_mass
from otclust.runs import atomic_write_text, check_output_files

ASSIGN_HELP = (
    "argmax (default): each image goes to its most probable cluster, trusting its own prediction; right for any set, "
    "small or skewed. balanced: one Sinkhorn solve over the whole predicted set (sinkhorn(log P, eps, b = the model's "
    "cluster prior)), then each image to the argmax of its row of the plan, so the cluster sizes follow the prior: "
    "useful for a large set known to be balanced like the training data, harmful for a small set or one whose "
    "classes are skewed, where it moves images into clusters they do not belong to"
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="assign images to the clusters of a trained model and write a CSV (and optionally sort the files into folders)",
        description=(
            "Assign each image of --data to a cluster of a trained model, in batches. Writes one CSV row per image: "
            "index, path (for image files), cluster, confidence (the model's probability of that cluster). Images of "
            "another size or colour mode than the training data are converted as the training data were, with a note. "
            "A model fitted behind a pretrained backbone embeds images with that network first; features:E.npy given to it "
            "are refused when the E.json beside them (written by otclust embed) names another backbone or weights. "
            "--export DIR also copies (or links) each image into DIR/cluster_XX/. See docs/reports.md for argmax vs balanced."
        ),
    )
    parser.add_argument("--checkpoint", required=True, help="a run folder of otclust fit, or its model.pt")
    add_data_options(parser)
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out, and otclust's cluster folders in --export, if they exist")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    add_weights_option(parser)
    parser.add_argument("--batch-size", type=int, default=1024, help="images per forward pass")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and scripts)")
    add_readout_option(parser)
    parser.add_argument("--assign", choices=["argmax", "balanced"], default="argmax", help=ASSIGN_HELP)
    parser.add_argument("--sinkhorn-eps", "--eps", dest="eps", type=float, default=0.05, help="entropic eps of --assign balanced's Sinkhorn, in log-probability units, as the methods' sinkhorn_eps (smaller: closer to exact OT, sizes follow the prior more strictly; default 0.05; --eps is its former name)")
    parser.add_argument("--export", default=None, metavar="DIR", help="copy each image into DIR/cluster_XX/ (image files only, e.g. --data folder:PATH)")
    parser.add_argument("--link", action="store_true", help="with --export: make symbolic links to the images instead of copies")
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        metavar="P",
        help="images whose confidence is below P are marked uncertain in the CSV and exported to DIR/uncertain/ instead of their cluster folder",
    )
    parser.set_defaults(run=run)


def load_data_for_model(args, method, config):
    """The data of --data (default: the model's training data), converted to what the model saw."""
    refuse_unused_weights(args.weights, config.backbone)
    spec = args.data or config.data
    image_size, size_from = args.image_size, "--image-size"
    if image_size is None and spec.startswith("folder:"):
        # Decode the files once, at the size the model saw (fit's --image-size, else the network's
        # input), as fit did: a decode at the default working resolution followed by a resize
        # gives slightly other pixels, and so other confidences than fit's assignments.csv.
        image_size = config.image_size or (None if method.spec.is_features else tuple(method.spec.image_size))
        size_from = "the size the model was trained at"
    # A model behind a pretrained backbone has no image size of its own: the folder is decoded at
    # that backbone's working resolution, as fit and embed decode it.
    dataset = load_dataset(spec, split=args.split or "all", download=bool(args.download), image_size=image_size, backbone=config.backbone, size_from=size_from)
    if is_pretrained(config.backbone) and not dataset.is_features:  # through the same frozen backbone first
        if not args.weights and config.weights and not Path(config.weights).is_file():
            checksum = f" (sha256 {config.weights_sha256[:12]}...)" if config.weights_sha256 else ""
            raise UserError(f"weights file not found: {config.weights}, where the model's {config.backbone} weights were when it was fitted: if the file moved, pass it with --weights PATH{checksum}")
        dataset = features_for_model(config, dataset, weights=args.weights, device=args.device)
    elif is_pretrained(config.backbone):
        if args.weights:  # embeddings are not embedded again: the file would be silently unused
            raise UserError(f"--weights embeds images, but {dataset.name} holds embeddings already: drop --weights, or give the images themselves (--data folder:DIR)")
        check_embedded_by_model_backbone(config, spec, dataset)
    model_spec = method.spec
    if model_spec.is_features != dataset.is_features:
        kind = "feature vectors" if model_spec.is_features else "images"
        raise UserError(f"the model was trained on {kind}, but {dataset.name} holds {'feature vectors' if dataset.is_features else 'images'}")
    if model_spec.is_features:
        if dataset.data.shape[1] != model_spec.feature_dim:
            raise UserError(f"the model expects {model_spec.feature_dim}-dimensional features, {dataset.name} has {dataset.data.shape[1]}")
    elif (dataset.channels, dataset.image_size) != (model_spec.channels, tuple(model_spec.image_size)):
        dataset = conform(dataset, model_spec.channels, tuple(model_spec.image_size))
    for note in dataset.notes:
        if not note.endswith("evaluation skipped"):  # predict does not evaluate: nothing is skipped
            print(f"note: {note}")
    return dataset


def check_embedded_by_model_backbone(config, spec: str, dataset) -> None:
    """features:E.npy given to a model fitted behind a pretrained backbone: embeddings of another
    network with the same dimension go through unnoticed and are clustered into nonsense, so the
    E.json that otclust embed writes beside them must name the model's backbone and weights.
    Without one (features made elsewhere) they are taken, with a note that nothing could be checked."""
    meta_path = features_file_paths(parse_spec(spec)[1])["meta"]
    expected = f"{config.backbone} (weights sha256 {(config.weights_sha256 or '?')[:12]}...)"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = None
    if not (isinstance(meta, dict) and str(meta.get("format", "")).startswith("otclust-embeddings")):
        dataset.notes.append(f"no {meta_path.name} of otclust embed beside the features: nothing says which network made them; the model expects embeddings by {expected}")
        return
    found_backbone, found_sha = meta.get("backbone"), meta.get("weights_sha256")
    # An otclust:RUN backbone is named by a path that may be spelled another way: its sha256 decides.
    same_name = found_backbone == config.backbone or str(config.backbone).startswith("otclust:")
    if found_sha != config.weights_sha256 or not same_name:
        raise UserError(
            f"{dataset.name} was embedded by {found_backbone} (weights sha256 {str(found_sha)[:12]}..., per {meta_path.name}), but the model was fitted behind {expected}: "
            f"embed the images with that backbone (otclust embed --backbone {config.backbone} --weights {config.weights or 'PATH'}), or give the images themselves (--data folder:DIR)"
        )


def model_prior(method, proba: np.ndarray):
    """The cluster sizes the model was trained towards, as the balanced assignment's column marginal."""
    import torch

    k = proba.shape[1]
    if k != method.n_clusters:  # a read-out with K chosen after training (--clusters auto): no sizes were trained towards
        return torch.full((k,), 1.0 / k)
    if method.prior_mode == "known":
        # A known prior is a multiset of sizes, matched to clusters by rank of their mass (as in training).
        return match_prior_to_mass(method.cluster_prior.cpu(), torch.from_numpy(proba.mean(axis=0)).float())
    if method.prior_mode == "auto":
        return method.estimated_sizes().cpu()
    return method.cluster_prior.cpu().float()


def balanced_assignment(proba: np.ndarray, prior, eps: float = 0.05) -> np.ndarray:
    """Cluster per row: argmax of the Sinkhorn plan between the set (rows 1/N) and the prior."""
    import torch

    log_p = torch.from_numpy(np.ascontiguousarray(proba, dtype=np.float32)).clamp_min(1e-30).log()
    b = torch.as_tensor(prior, dtype=torch.float32)
    b = b / b.sum()
    plan = sinkhorn(log_p, eps=eps, b=b, n_iters=2000, tol=1e-3).plan
    return plan.argmax(dim=1).numpy()


def check_export_dir(export: Path, overwrite: bool) -> None:
    if export.exists() and not export.is_dir():
        raise UserError(f"--export {export} is a file: choose a folder")
    if export.is_dir() and any(export.iterdir()) and not overwrite:
        raise UserError(f"--export folder {export} is not empty: pass --overwrite to replace otclust's cluster folders in it, or choose another folder")


# What an export wrote, relative to its folder: --overwrite removes these files and nothing else
# (a photo the user saved into cluster_03/ afterwards is theirs).
EXPORT_MANIFEST = ".otclust-export.json"


def check_export_apart_from_images(export: Path, paths: list[str], data_root: Path | None) -> None:
    """The export folder must not hold the images being sorted (--overwrite would delete them
    before copying them), nor lie inside the data folder (the next fit would read the copies)."""
    target = export.resolve()
    if any(target == source or target in source.parents for source in (Path(p).resolve() for p in paths)):
        raise UserError(f"--export {export} holds the images being sorted: choose an --export folder outside the data, e.g. {export.resolve().parent / (export.resolve().name + '-sorted')}")
    if data_root is not None and data_root.is_dir() and data_root.resolve() in target.parents:
        raise UserError(f"--export {export} lies inside the data folder {data_root}: the next fit on it would read the copies as more images; choose a folder outside it")


def _clear_export_dir(export: Path) -> None:
    """Remove the files an earlier export recorded in its manifest, then its folders left empty;
    nothing else. Cluster folders without a manifest are not otclust's to empty: refused."""
    manifest = export / EXPORT_MANIFEST
    ours = [sub for sub in export.iterdir() if sub.is_dir() and not sub.is_symlink() and (sub.name.startswith("cluster_") or sub.name == "uncertain")]
    if not ours:
        return
    try:
        written = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--export folder {export} has cluster folders, but no record of what otclust wrote there ({EXPORT_MANIFEST}): empty it yourself or choose another folder") from None
    for name in written:
        item = export / name
        if item.parent.parent == export and (item.is_file() or item.is_symlink()):
            item.unlink()
    for sub in ours:
        if not any(sub.iterdir()):
            sub.rmdir()
    manifest.unlink()


def _same_file_key(name: str) -> str:
    return unicodedata.normalize("NFC", name).lower()


def export_images(paths: list[str], clusters: np.ndarray, uncertain: np.ndarray, export: Path, n_clusters: int, link: bool, progress: bool = True) -> dict[str, int]:
    """Copy (or symlink) each image into export/cluster_XX/ or export/uncertain/; returns counts per folder."""
    width = max(2, len(str(n_clusters - 1)))
    export.mkdir(parents=True, exist_ok=True)
    used: dict[Path, set[str]] = {}
    counts: dict[str, int] = {}
    written: list[str] = []  # the manifest: what a later --overwrite may remove
    items = range(len(paths))
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="linking" if link else "copying", leave=False, file=sys.stderr, disable=None)
    for i in items:
        source = Path(paths[i])
        folder = export / ("uncertain" if uncertain[i] else f"cluster_{int(clusters[i]):0{width}d}")
        names = used.setdefault(folder, set())
        if not names:
            folder.mkdir(exist_ok=True)
        name = source.name
        # Same file name from two folders (IMG_0001.jpg of every camera folder): keep both. Compared
        # without case and in one Unicode form: on macOS IMG_0.jpg and img_0.JPG are one file, and
        # so are café.jpg composed and decomposed (two files on Linux, a folder may hold both).
        while _same_file_key(name) in names:
            name = f"{Path(name).stem}-{i}{source.suffix}"
        names.add(_same_file_key(name))
        target = folder / name
        if link:
            os.symlink(source.resolve(), target)
        else:
            shutil.copy2(source, target)
        written.append(f"{folder.name}/{name}")
        counts[folder.name] = counts.get(folder.name, 0) + 1
    atomic_write_text(export / EXPORT_MANIFEST, json.dumps({"files": written}, indent=0))
    return counts


def write_predictions_csv(path: Path, clusters: np.ndarray, confidence: np.ndarray, paths: list[str] | None, uncertain: np.ndarray | None) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index"] + (["path"] if paths is not None else []) + ["cluster", "confidence"] + (["uncertain"] if uncertain is not None else []))
    for i in range(len(clusters)):
        row = [i] + ([paths[i]] if paths is not None else []) + [int(clusters[i]), f"{confidence[i]:.4f}"]
        if uncertain is not None:
            row.append(int(uncertain[i]))
        writer.writerow(row)
    atomic_write_text(Path(path), buffer.getvalue())


def run(args) -> int:
    out = Path(args.out)
    check_output_files([out], args.overwrite, "CSV")
    if args.min_confidence is not None and not 0 < args.min_confidence <= 1:
        raise UserError(f"--min-confidence must be in (0, 1], got {args.min_confidence}")
    # Checked whatever --assign says, so a mistyped value never waits for the day balanced is used;
    # NaN and inf pass '<= 0' and made Sinkhorn raise its ValueError after the whole prediction.
    if not (math.isfinite(args.eps) and args.eps > 0):
        raise UserError(f"--sinkhorn-eps must be a positive finite number, got {args.eps}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.link and not args.export:
        raise UserError("--link only applies with --export DIR")
    export = Path(args.export) if args.export else None
    if export is not None:
        check_export_dir(export, args.overwrite)

    method, config = load_trained(args.checkpoint, device=args.device, predictor=args.readout)
    dataset = load_data_for_model(args, method, config)
    if export is not None and dataset.paths is None:
        raise UserError(f"--export needs image files, and {dataset.name} has none (it is held in memory): use --data folder:PATH, or drop --export")
    if export is not None:
        spec_name, spec_path, _ = parse_spec(args.data or config.data)
        check_export_apart_from_images(export, dataset.paths, spec_path if spec_name == "folder" else None)
    proba = predict_in_batches(method, dataset.data, select_device(args.device), args.batch_size, description=None if args.no_progress else "predicting")
    if not np.isfinite(proba).all():
        # A run whose training diverged (written before fit checked for it): NaN confidences, and
        # every sample in cluster 0, would otherwise be written as if they were predictions.
        raise UserError(f"{args.checkpoint} gives NaN or infinite cluster probabilities: its training diverged; train it again with a smaller --lr")
    k = proba.shape[1]
    if args.assign == "balanced":
        if len(proba) < 20 * k:
            print(f"note: balanced assignment of only {len(proba)} samples into {k} clusters forces the prior's sizes on a small set; "
                  "--assign argmax is safer unless you know the set is balanced", file=sys.stderr)
        clusters = balanced_assignment(proba, model_prior(method, proba), args.eps)
        moved = int((clusters != proba.argmax(axis=1)).sum())
        print(f"balanced assignment: {moved} of {len(proba)} samples moved from their most probable cluster")
    else:
        clusters = proba.argmax(axis=1)
    confidence = proba[np.arange(len(proba)), clusters]
    uncertain = None if args.min_confidence is None else confidence < args.min_confidence

    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions_csv(out, clusters, confidence, dataset.paths, uncertain)
    sizes = np.bincount(clusters, minlength=k)
    print(f"{len(proba)} samples assigned to {int((sizes > 0).sum())} of {k} clusters by the {method.predictor} predictor; written: {out}")
    if uncertain is not None:
        print(f"{int(uncertain.sum())} samples below confidence {args.min_confidence:g}" + (" go to uncertain/" if export is not None else " (marked in the 'uncertain' column)"))
    if export is not None:
        if args.overwrite and export.is_dir():
            _clear_export_dir(export)
        counts = export_images(dataset.paths, clusters, uncertain if uncertain is not None else np.zeros(len(clusters), dtype=bool), export, k, args.link, progress=not args.no_progress)
        print(f"{'linked' if args.link else 'copied'} {sum(counts.values())} images into {len(counts)} folders of {export}")
    return 0

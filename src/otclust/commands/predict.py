"""otclust predict: assign new images (or feature vectors) to the clusters of a trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from otclust.commands.common import add_data_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="assign images to the clusters of a trained model and write a CSV",
        description="Assign each image of --data to a cluster of a trained model. Writes one CSV row per image: path (or index), cluster, confidence.",
    )
    parser.add_argument("--checkpoint", required=True, help="model.pt of a run folder")
    add_data_options(parser)
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--batch-size", type=int, default=1024, help="images per forward pass")
    parser.set_defaults(run=run)


def load_data_for_model(args, method, config):
    """The data of --data (default: the model's training data), converted to what the model saw."""
    from otclust.data import conform, load_dataset
    from otclust.errors import UserError

    spec = args.data or config.data
    dataset = load_dataset(spec, split=args.split or "all", download=bool(args.download), image_size=args.image_size)
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
        print(f"note: {note}")
    return dataset


def run(args) -> int:
    from otclust.engine import load_trained, predict_in_batches, select_device
    from otclust.errors import UserError
    from otclust.runs import write_assignments_csv

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists: pass --overwrite or choose another --out")
    method, config = load_trained(args.checkpoint, device=args.device)
    dataset = load_data_for_model(args, method, config)
    proba = predict_in_batches(method, dataset.data, select_device(args.device), args.batch_size, description="predicting")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_assignments_csv(out, proba, None, dataset.paths)
    sizes = np.bincount(proba.argmax(axis=1), minlength=proba.shape[1])
    print(f"{len(proba)} samples assigned to {int((sizes > 0).sum())} of {proba.shape[1]} clusters; written: {out}")
    return 0

"""otclust evaluate: score a trained model on labelled data."""

from __future__ import annotations

import json
from pathlib import Path

from otclust.checkpoint import checkpoint_file
from otclust.commands.common import add_data_options, add_readout_option, add_weights_option
from otclust.commands.predict import load_data_for_model
from otclust.engine import load_trained, predict_in_batches, select_device
from otclust.errors import UserError
from otclust.metrics import evaluate_clustering
from otclust.runs import atomic_write_text, check_output_files


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a trained model (ACC/NMI/ARI) on labelled data",
        description="Predict clusters with a trained model and score them against the data's labels (Hungarian-matched ACC, NMI, ARI). Prints the scores and writes them as JSON. "
        "The data are read as predict reads them (a pretrained backbone's embeddings checked the same way).",
    )
    parser.add_argument("--checkpoint", required=True, help="a run folder of otclust fit, or its model.pt")
    add_data_options(parser)
    parser.add_argument("--out", default=None, help="JSON file to write (default: evaluation.json beside the checkpoint, replaced at each evaluation)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    add_weights_option(parser)
    parser.add_argument("--batch-size", type=int, default=1024, help="images per forward pass")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and scripts)")
    add_readout_option(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    # The default file is otclust's own, in the run folder; a file the user named is not replaced unasked.
    out = Path(args.out) if args.out else checkpoint_file(args.checkpoint).parent / "evaluation.json"
    check_output_files([out], overwrite=args.overwrite or not args.out, kind="JSON")
    method, config = load_trained(args.checkpoint, device=args.device, predictor=args.readout)
    dataset = load_data_for_model(args, method, config)
    if dataset.labels is None:
        raise UserError(f"{dataset.name} has no labels, so it cannot be scored: use 'otclust predict' to get its clusters")
    device = select_device(args.device)
    proba = predict_in_batches(method, dataset.data, device, args.batch_size, description=None if args.no_progress else "predicting")
    metrics = {"checkpoint": str(args.checkpoint), "data": dataset.name, "n_samples": len(proba), "predictor": method.predictor, **evaluate_clustering(dataset.labels, proba.argmax(axis=1))}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(metrics, indent=2) + "\n")
    print(f"ACC {metrics['acc']:.4f}  NMI {metrics['nmi']:.4f}  ARI {metrics['ari']:.4f}  ({len(proba)} samples of {dataset.name}, {method.predictor} predictor)")
    print(f"written: {out}")
    return 0

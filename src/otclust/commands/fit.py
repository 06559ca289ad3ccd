"""otclust fit: train a method on a data set and write a run folder."""

from __future__ import annotations

import contextlib
from pathlib import Path

from otclust.commands.common import HelpFormatter, add_training_options, config_from_args
from otclust.choose_k import TOLERANCE
from otclust.config import load_config_file
from otclust.data import load_dataset, parse_spec
from otclust.data.decode import SETTINGS
from otclust.data.embeddings import pretrained_training_data
from otclust.distributed import env_rank
from otclust.errors import UserError
from otclust.k_search import fit_model
from otclust.models.pretrained import is_pretrained
from otclust.report import write_report
from otclust.runs import prepare_output_folder


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "fit",
        help="train a clustering model on a data set and write a run folder",
        description="Train a clustering method and write OUT/config.yaml, model.pt (checkpoint, written every 30 s or epoch, whichever is longer), metrics.jsonl (per epoch), metrics.json (final ACC/NMI/ARI when labels exist, of the run's predictor, and of the head and the read-out separately) and assignments.csv. "
        "It trains for --epochs, or --steps, or else a budget that grows with the data's size (see --epochs).",
        formatter_class=HelpFormatter,
    )
    add_training_options(parser)
    parser.add_argument("--eval-split", default=None, help="score on this split instead of the training data (e.g. --split train --eval-split test)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/METHOD-DATA-seedS)")
    parser.add_argument("--overwrite", action="store_true", help="replace otclust's files in an existing --out folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch is still printed)")
    parser.add_argument("--report", action="store_true", help="write OUT/report.html with figures when training ends")
    parser.set_defaults(run=run)


def default_out(config) -> Path:
    data_name = config.data.split(":", 1)[0]
    return Path("runs") / f"{config.method}-{data_name}-seed{config.seed}"


def refuse_out_inside_data(out: Path, data: str) -> None:
    """A run folder inside an image folder becomes part of it: the next fit reads the report's
    figures as images (a new class, or a grey set turned colour)."""
    name, root, _ = parse_spec(data)
    if name == "folder" and root is not None and root.is_dir():
        target, root = out.resolve(), root.resolve()
        if target == root or root in target.parents:
            raise UserError(f"--out {out} lies inside the data folder {root}: the next fit would read the run's figures as images; choose an --out outside it")


def run(args) -> int:
    config = config_from_args(args)
    out = Path(args.out) if args.out else default_out(config)
    main = env_rank() == 0  # under torchrun only rank 0 touches the run folder
    refuse_out_inside_data(out, config.data)
    if main and not args.resume:
        prepare_output_folder(out, overwrite=args.overwrite, check_only=True)
    if args.no_progress:
        SETTINGS.progress = False  # the decoding bars too
    # The folder loader picks its working resolution for the backbone that will read the images.
    dataset = load_dataset(config.data, split=config.split, download=config.download, image_size=config.image_size, backbone=config.backbone)
    eval_dataset = None
    if args.eval_split and args.eval_split != config.split:
        eval_dataset = load_dataset(config.data, split=args.eval_split, download=config.download, image_size=config.image_size, backbone=config.backbone)
    if args.clusters is None and "clusters" not in (load_config_file(args.config) if args.config else {}):
        labelled = f"; the data's labels name {dataset.n_classes} classes" if dataset.n_classes and dataset.n_classes != config.clusters else ""
        dataset.notes.append(f"{config.clusters} clusters, the default{labelled}: --clusters K sets K, --clusters auto chooses it")
    input_neighbors = None
    if config.data.startswith("folder:") and dataset.data.shape[1] == 3 and not is_pretrained(config.backbone) and config.method != "kmeans":
        dataset.notes.append(
            "training from scratch on colour photos: on otclust's generated photo folders this has stayed near chance "
            "(docs/results.md 3.4); a frozen pretrained --backbone (docs/pretrained.md) is the way to try first"
        )
    if is_pretrained(config.backbone):  # frozen stage: embed once (cached), train on the embeddings
        dataset, eval_dataset, input_neighbors = pretrained_training_data(config, dataset, eval_dataset, progress=main and not args.no_progress)
    created = main and not out.exists()
    if main:
        out = prepare_output_folder(out, overwrite=args.overwrite, resume=args.resume)
    try:
        trainer, result = fit_model(config, dataset, eval_dataset, out=out, progress=not args.no_progress, resume=args.resume, input_neighbors=input_neighbors)
    except UserError:
        if created:  # a setting refused before anything was written: leave no empty run folder
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    if not trainer.is_main:
        return 0
    print(format_metrics_table(result.metrics))
    print(f"run folder: {out}")
    steps = [f"otclust predict --checkpoint {out} --data NAME[:PATH] --out clusters.csv    (new images into these clusters)"]
    if args.report:
        print(f"report: {write_report(out, device=config.device)}")
    else:
        steps.insert(0, f"otclust report {out}    (figures: curves, confusion, t-SNE, each cluster's images)")
    print("next: " + "\n      ".join(steps))
    return 0


def format_metrics_table(metrics: dict) -> str:
    """A small Markdown table of the final scores, readable in a terminal and pasteable in docs:
    one row per predictor of the same trained network, the run's own (its predictions) first."""
    header = "| method | data | K | predictor | ACC | NMI | ARI | seconds |"
    rule = "| --- | --- | --- | --- | --- | --- | --- | --- |"
    predictor = metrics.get("predictor", "head")
    scored = [(f"{predictor} (used)", metrics)]
    others = [("head", metrics.get("head"))] if predictor != "head" else []
    if "readout" in metrics and metrics["readout"]["name"] != predictor:
        others.append((metrics["readout"]["name"], metrics["readout"]))
    scored += [(name, scores) for name, scores in others if scores]

    def fmt(scores, key):
        return f"{scores[key]:.4f}" if key in scores else "n/a"

    # Under --clusters auto without a refit the head keeps the K it trained with; the read-out has the chosen one.
    selection = metrics.get("k_selection")
    head_k = selection["training_clusters"] if selection and not selection.get("refit") else metrics["clusters"]
    lines = [header, rule]
    for name, scores in scored:
        k = head_k if name.startswith("head") else metrics["clusters"]
        lines.append(f"| {metrics['method']} | {metrics['data']} | {k} | {name} | {fmt(scores, 'acc')} | {fmt(scores, 'nmi')} | {fmt(scores, 'ari')} | {metrics['seconds']:.1f} |")
    if selection and selection.get("refit"):
        searched = f" in {selection['search_seconds']:.1f} s" if selection.get("search_seconds") is not None else ""
        lines.append(f"K = {selection['chosen']} was chosen by a search run (trained with {selection['training_clusters']} clusters{searched}; kept in k-search/); the seconds above are the second run's")
    if selection and selection.get("close"):
        close = ", ".join(str(k) for k in selection["close"])
        lines.append(f"K = {close} scored within {TOLERANCE} of the best stability too: the criterion cannot tell them from {selection['chosen']} "
                     "(the report's 'Choosing K' shows the curve); --clusters K trains with one of them")
    if "note" in metrics:
        lines.append(f"note: {metrics['note']}")
    return "\n".join(lines)

"""otclust report: figures and an HTML page showing what a run learned."""

from __future__ import annotations

from otclust.commands.common import HelpFormatter, add_weights_option
from otclust.errors import UserError
from otclust.report import write_report


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write RUN_DIR/report.html: training curves, confusion matrix, t-SNE map, cluster sizes, image grids",
        description=(
            "Write RUN_DIR/report.html, one self-contained page (figures embedded, and also saved as "
            "RUN_DIR/figures/*.png): training curves per epoch; the Hungarian-matched confusion matrix; a t-SNE "
            "map of the model's features coloured by cluster and by true class; cluster sizes against the prior; "
            "and for each cluster its most and least confident images. The run's data are loaded again and "
            "predicted with model.pt (through the run's pretrained --backbone first, if it had one: its embeddings "
            "are read from the cache fit filled). Parts needing labels or images are left out with a note when the data "
            "have none. How to read it: docs/reports.md."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by 'otclust fit'")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing RUN_DIR/report.html")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--max-points", type=int, default=3000, help="samples in the t-SNE map (a random subset of the data)")
    parser.add_argument("--images", type=int, default=8, help="images per row in each cluster's grid")
    parser.add_argument("--max-clusters", type=int, default=100, help="image grids for at most this many clusters (the largest)")
    parser.add_argument("--batch-size", type=int, default=512, help="images per forward pass")
    add_weights_option(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    for flag, value in (("--max-points", args.max_points), ("--images", args.images), ("--max-clusters", args.max_clusters), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    page = write_report(
        args.run_dir,
        overwrite=args.overwrite,
        device=args.device,
        max_points=args.max_points,
        images_per_row=args.images,
        max_cluster_grids=args.max_clusters,
        batch_size=args.batch_size,
        weights=args.weights,
    )
    print(f"written: {page}")
    return 0

"""otclust upgrade-checkpoint: convert a model.pt of an older otclust (format 1) to today's format."""

from __future__ import annotations

import sys
from pathlib import Path

from otclust.checkpoint import upgrade_checkpoint
from otclust.errors import UserError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "upgrade-checkpoint",
        help="convert a model.pt written by an older otclust into the current format (only for files you trust)",
        description=(
            "Convert a checkpoint of format 1 (otclust before checkpoints were loadable without unpickling) into "
            "the current format, which every otclust command loads without running code. Reading the old file "
            "means unpickling it, and unpickling a crafted file runs whatever code it holds: convert only files "
            "you or your own otclust runs wrote."
        ),
    )
    parser.add_argument("old", metavar="OLD", help="the format-1 model.pt")
    parser.add_argument("new", metavar="NEW", help="where to write the converted checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace NEW if it exists")
    parser.set_defaults(run=run)


def run(args) -> int:
    new = Path(args.new)
    if new.exists() and not args.overwrite:
        raise UserError(f"{new} already exists: pass --overwrite or choose another NEW")
    checkpoint = upgrade_checkpoint(args.old, new, warn=lambda message: print(message, file=sys.stderr, flush=True))
    epoch = checkpoint.get("epoch")
    print(f"written: {new} ({checkpoint['config'].get('method')} on {checkpoint['config'].get('data')}" + (f", epoch {epoch}" if epoch is not None else "") + ")")
    return 0

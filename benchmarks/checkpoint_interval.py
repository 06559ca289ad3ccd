"""What writing the run folder after every epoch cost: the same fit, checkpoints after every epoch
against otclust's interval (``engine.CHECKPOINT_EVERY_SECONDS``), in one process, one after the
other.

    python benchmarks/checkpoint_interval.py --tiny 40 --threads 2          # 40 generated images, K = 4
    python benchmarks/checkpoint_interval.py --data SPEC --clusters 10 --split train --threads 2

``--tiny N`` trains on N generated 40x40 grey images of 4 classes (a bright band at one of four
heights, with noise): the smallest kind of folder a user may have, where the default budget's
floor makes thousands of epochs of one step. Each fit runs with every other default (CLOT, seed
0) into a temporary run folder; the table gives the checkpoints written, the wall time and the
scores, which must be identical (only the writing differs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust import engine  # noqa: E402
from otclust.config import FitConfig  # noqa: E402
from otclust.data import ImageDataset, load_dataset  # noqa: E402
from otclust.runs import prepare_output_folder  # noqa: E402


def tiny_dataset(n: int, seed: int = 0) -> ImageDataset:
    """n images of 4 classes, class c a bright band at rows 5 + 8c to 13 + 8c, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = np.zeros((n, 1, 40, 40), dtype=np.float64)
    for i, c in enumerate(labels):
        images[i, 0, 5 + 8 * c : 13 + 8 * c, :] = 200
    images = np.clip(images + rng.normal(0, 20, images.shape), 0, 255).astype(np.uint8)
    return ImageDataset(torch.from_numpy(images), labels, f"tiny-{n}")


def timed_fit(config: FitConfig, dataset: ImageDataset, every: float, folder: Path) -> dict:
    trainer = engine.Trainer(config, out_dir=prepare_output_folder(folder), progress=False, log=lambda message: None)
    trainer.checkpoint_every_seconds = every
    written, save = [], trainer._save_checkpoint
    trainer._save_checkpoint = lambda epoch, *rest: (written.append(epoch), save(epoch, *rest))
    started = time.perf_counter()
    result = trainer.fit(dataset)
    seconds = time.perf_counter() - started
    return {"epochs": trainer.config.epochs, "written": len(written), "seconds": seconds, "metrics": result.metrics}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny", type=int, metavar="N", help="N generated images of 4 classes")
    source.add_argument("--data", help="any --data of otclust fit")
    parser.add_argument("--clusters", type=int, default=None, help="K (default: 4 with --tiny, else 10)")
    parser.add_argument("--split", default="all")
    parser.add_argument("--epochs", type=int, default=None, help="default: the budget for the data's size")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = tiny_dataset(args.tiny) if args.tiny else load_dataset(args.data, split=args.split)
    clusters = args.clusters or (4 if args.tiny else 10)
    config = FitConfig(data=dataset.name, clusters=clusters, seed=0, epochs=args.epochs)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for label, every in (("after every epoch (before)", 0.0), (f"every {engine.CHECKPOINT_EVERY_SECONDS:g} s (now)", engine.CHECKPOINT_EVERY_SECONDS)):
            rows.append((label, timed_fit(config, dataset, every, Path(root) / f"run-{every:g}")))
    print(f"{dataset.name}: {dataset.n_samples} samples, K = {clusters}, {args.threads} threads\n")
    print("| checkpoints | epochs | written | wall s | ACC | NMI | ARI |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, r in rows:
        m = r["metrics"]
        print(f"| {label} | {r['epochs']} | {r['written']} | {r['seconds']:.1f} | {m.get('acc', float('nan')):.4f} | {m.get('nmi', float('nan')):.4f} | {m.get('ari', float('nan')):.4f} |")
    same = all(rows[0][1]["metrics"].get(k) == rows[1][1]["metrics"].get(k) for k in ("acc", "nmi", "ari"))
    print(f"\nsame scores: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()

"""Frozen pretrained backbones: what they cost on this machine. Prints Markdown tables.

    python benchmarks/pretrained.py speed --backbones timm:resnet18,timm:vit_small_patch16_224 --images 256
    python benchmarks/pretrained.py head --samples 70000 --dim 512 --full-budget-head
    python benchmarks/pretrained.py defaults --features a.npy,b.npy --seeds 0,1,2
    python benchmarks/pretrained.py transfer --source fashion-mnist --target digits --epochs 10

speed: images/s of `embed_images` (the library's preprocessing to the model's native input size,
then the frozen forward) on random 32 x 32 RGB images, through the same load path as
`--backbone ... --weights FILE`, with random weights saved to a temporary file (nothing is
downloaded; speed does not depend on the weights' values).

head: the part `fit` runs once the embeddings are cached: the kNN graph (timed apart: it is
cached too), then CLOT on N x D vectors with the frozen-feature settings (second view from a
cached neighbour, several heads) and the default budget for feature vectors unless --epochs is
given; "fit s" is the whole run: training, then the read-out (--readout) and the predictions.
The vectors are a Gaussian mixture (10 equal classes, centres `--separation` apart in units of
the noise), so ACC says the head works, not what a real backbone would give.

defaults: the frozen stage's choices on real embeddings (files of `otclust embed --out`): k-means
on them (its centres; the kmeans method's head column), CLOT with the frozen-feature settings at
the full image budget and at the short default budget, each scored by its head and by the
smoothed read-out from the same network.

transfer: CLOT with the small CNN trained on --source, then used as `otclust:RUN/model.pt`
(frozen) to embed and cluster --target, against CLOT trained on --target from scratch.
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

from otclust import budget  # noqa: E402
from otclust.config import FitConfig  # noqa: E402
from otclust.data import ImageDataset  # noqa: E402
from otclust.data.embeddings import PRETRAINED_CLOT_PARAMS, embed_images, knn_graph  # noqa: E402
from otclust.engine import Trainer  # noqa: E402
from otclust.models.pretrained import import_timm, import_torchvision, load_extractor  # noqa: E402
from otclust.runs import prepare_output_folder  # noqa: E402


def random_weights_file(backbone: str, folder: Path) -> Path:
    library, name = backbone.split(":", 1)
    if library == "timm":
        network = import_timm().create_model(name, pretrained=False)
    else:
        import_torchvision()
        from torchvision.models import get_model

        network = get_model(name.partition(".")[0], weights=None)
    path = folder / f"{name}.pt"
    torch.save(network.state_dict(), path)
    return path


def speed(args) -> None:
    print(f"| backbone | input | D | images/s (batch {args.batch_size}, {torch.get_num_threads()} threads) | images per CPU-second |")
    print("| --- | --- | --- | --- | --- |")
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(args.images, 3, 32, 32), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as folder:
        for backbone in args.backbones.split(","):
            extractor = load_extractor(backbone, str(random_weights_file(backbone, Path(folder))))
            embed_images(extractor, images[: args.batch_size], torch.device("cpu"), args.batch_size, progress=False)  # warm-up
            started, cpu_started = time.perf_counter(), time.process_time()
            features = embed_images(extractor, images, torch.device("cpu"), args.batch_size, progress=False)
            seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
            crop = "x".join(str(v) for v in extractor.input_size)
            print(f"| {backbone} | {crop} | {features.shape[1]} | {len(images) / seconds:.1f} | {len(images) / cpu_seconds:.1f} |")


def mixture(n: int, dim: int, classes: int, separation: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    centres *= separation / np.sqrt(2 * dim) / centres.std()
    labels = rng.permutation(np.arange(n) % classes)
    features = centres[labels] + rng.normal(size=(n, dim)) / np.sqrt(dim)
    return np.maximum(features, 0).astype(np.float32), labels  # non-negative, as pooled ReLU features are


def head(args) -> None:
    features, labels = mixture(args.samples, args.dim, 10, args.separation, args.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    graph = knn_graph(features, 50, torch.device("cpu"))
    knn_seconds, knn_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"| N x D | kNN graph (k=50) s [CPU s] | read-out | epochs | training s | fit s [CPU s] | s/epoch | ACC | NMI | ({torch.get_num_threads()} threads) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    runs = [(readout, args.epochs) for readout in args.readout.split(",")]
    if args.full_budget_head:  # the frozen stage's defaults before 2026-12-03, in the same run
        runs.append(("head", budget.default_epochs(args.samples, args.batch_size)))
    for readout, epochs in runs:
        config = FitConfig(data="mixture", clusters=10, epochs=epochs, batch_size=args.batch_size, device="cpu", seed=args.seed, params=dict(PRETRAINED_CLOT_PARAMS), backbone="mlp", readout=readout)
        trainer = Trainer(config, progress=False, log=lambda message: None)
        trainer.input_neighbors = torch.from_numpy(graph)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = trainer.fit(ImageDataset(torch.from_numpy(features), labels, "mixture"))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        m, rows = result.metrics, result.history
        training = sum(r["seconds"] for r in rows)
        print(f"| {args.samples} x {args.dim} | {knn_seconds:.1f} [{knn_cpu:.1f}] | {readout} | {len(rows)} | {training:.1f} | {seconds:.1f} [{cpu:.1f}] | {training / len(rows):.2f} | {m['acc']:.3f} | {m['nmi']:.3f} | |")


def defaults(args) -> None:
    """Frozen-feature CLOT on embedding files written by `otclust embed --out` (FILE.npy with its
    .labels.npy and .knn.npy): pixel-free baselines, the full budget and the short default."""
    quiet = {"progress": False, "log": lambda message: None}
    print("| features | N | run | epochs | head ACC | smoothed ACC | smoothed NMI | training s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in args.features.split(","):
        stem = Path(path).with_suffix("")
        x, labels = np.load(path), np.load(f"{stem}.labels.npy")
        graph = torch.from_numpy(np.load(f"{stem}.knn.npy"))
        dataset = ImageDataset(torch.from_numpy(x), labels, stem.name)
        full = budget.default_epochs(len(x), 256)
        runs = [("k-means on the embeddings", "kmeans", None), (f"CLOT, full budget ({full} epochs)", "clot", full), ("CLOT, short budget (default)", "clot", None)]
        for name, method, epochs in runs:
            scores = []
            for seed in [int(s) for s in args.seeds.split(",")] if method == "clot" else [0]:
                params = dict(PRETRAINED_CLOT_PARAMS) if method == "clot" else {}
                config = FitConfig(method=method, data="features", clusters=args.clusters, epochs=epochs, device="cpu", seed=seed, params=params, backbone="mlp", readout="smoothed")
                trainer = Trainer(config, **quiet)
                trainer.input_neighbors = graph
                result = trainer.fit(dataset)
                m = result.metrics
                scores.append((m["head"]["acc"], m["acc"], m["nmi"], sum(r["seconds"] for r in result.history), len(result.history)))
            a = np.array([row[:4] for row in scores])
            cell = [f"{a[:, j].mean():.3f} ± {a[:, j].std():.3f}" if len(a) > 1 else f"{a[0, j]:.3f}" for j in range(3)]
            print(f"| {stem.name} | {len(x):,} | {name} | {scores[0][4] if method == 'clot' else '-'} | {cell[0]} | {cell[1]} | {cell[2]} | {a[:, 3].mean():.0f} |", flush=True)


def transfer(args) -> None:
    from otclust.data import load_dataset
    from otclust.data.embeddings import embed_dataset, features_dataset

    source = load_dataset(args.source, split="train" if args.source != "digits" else "all")
    if args.source_samples and args.source_samples < len(source):
        source = source.subset(np.random.default_rng(0).choice(len(source), args.source_samples, replace=False))
    target = load_dataset(args.target, split="all")
    if args.target_samples and args.target_samples < len(target):
        target = target.subset(np.random.default_rng(1).choice(len(target), args.target_samples, replace=False))
    quiet = {"progress": False, "log": lambda message: None}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        run = prepare_output_folder(Path(folder) / "source")
        Trainer(FitConfig(data=args.source, clusters=10, epochs=args.epochs, device="cpu", seed=args.seed), out_dir=run, **quiet).fit(source)
        source_seconds = time.perf_counter() - started
        extractor = load_extractor(f"otclust:{run / 'model.pt'}")
        for seed in range(args.seeds):
            for readout in args.readout.split(","):
                started = time.perf_counter()
                embedded = embed_dataset(target, extractor, torch.device("cpu"), neighbors=50, progress=False, use_cache=False, log=lambda m: None)
                config = FitConfig(data=args.target, clusters=10, epochs=args.head_epochs, device="cpu", seed=seed, params=dict(PRETRAINED_CLOT_PARAMS), backbone=f"otclust:{run / 'model.pt'}", readout=readout)
                trainer = Trainer(config, **quiet)
                trainer.input_neighbors = torch.from_numpy(embedded.neighbors)
                m = trainer.fit(features_dataset(target, embedded.features)).metrics
                rows.append((f"frozen otclust: backbone, CLOT on the embeddings ({args.head_epochs or 'default'} epochs, read-out {readout})", seed, m, time.perf_counter() - started))
            if args.scratch_epochs == 0:
                continue
            started = time.perf_counter()
            m = Trainer(FitConfig(data=args.target, clusters=10, epochs=args.scratch_epochs, device="cpu", seed=seed), **quiet).fit(target).metrics
            rows.append((f"from scratch (small-cnn, {args.scratch_epochs} epochs)", seed, m, time.perf_counter() - started))
    print(f"source: CLOT small-cnn, {args.epochs} epochs on {len(source)} images of {args.source} ({source_seconds:.0f} s); target: {len(target)} images of {args.target}")
    print("| target | how | seed | ACC | NMI | ARI | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for how, seed, m, seconds in rows:
        print(f"| {args.target} | {how} | {seed} | {m['acc']:.3f} | {m['nmi']:.3f} | {m['ari']:.3f} | {seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--backbones", default="timm:resnet18,timm:vit_small_patch16_224")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p = sub.add_parser("head")
    p.add_argument("--samples", type=int, default=70000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--epochs", type=int, default=None, help="default: the budget fit gives feature vectors")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--separation", type=float, default=3.0)
    p.add_argument("--readout", default="smoothed", help="comma-separated predictors: smoothed (the default), kmeans, head")
    p.add_argument("--full-budget-head", action="store_true", help="add a row with the full image budget, predicted by the head (the defaults before 2026-12-03)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("defaults")
    p.add_argument("--features", required=True, help="comma-separated FILE.npy written by otclust embed --out")
    p.add_argument("--seeds", default="0")
    p.add_argument("--clusters", type=int, default=10)
    p = sub.add_parser("transfer")
    p.add_argument("--source", default="fashion-mnist")
    p.add_argument("--source-samples", type=int, default=10000)
    p.add_argument("--target", default="digits")
    p.add_argument("--target-samples", type=int, default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--head-epochs", type=int, default=None, help="default: the budget fit gives feature vectors")
    p.add_argument("--scratch-epochs", type=int, default=60, help="CLOT small-cnn from scratch on the target (60: the digits recipe; 0: skip)")
    p.add_argument("--readout", default="head,smoothed", help="CLOT predictors to score on the frozen embeddings")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"speed": speed, "head": head, "defaults": defaults, "transfer": transfer}[args.what](args)


if __name__ == "__main__":
    main()

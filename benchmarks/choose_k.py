"""Choosing K without labels: the stability and eigengap criteria against the silhouette, Calinski-Harabasz and
Davies-Bouldin indices, on feature sets that cost nothing to make.

    python benchmarks/choose_k.py                       # every set, K searched in 2..15
    python benchmarks/choose_k.py --sets blobs-5,digits --figure curves.png
    python benchmarks/choose_k.py --sets none --features clot-digits=features.npy,labels.npy

--features adds learned features saved as .npy (e.g. a trained model's backbone features from
Trainer.embed), with their labels for scoring.

Every criterion but the eigengap sees the same features: unit-normalised and smoothed over 10
nearest neighbours 5 times (otclust.choose_k.smoothed_features); the eigengap reads the kNN graph
of the unsmoothed ones. ACC is that of the best of 10 k-means restarts on
them at the chosen K and at the true K (Hungarian matching; with K != the true number of classes
the extra clusters or classes count as wrong). Labels are used only to score. Prints a Markdown
table; --figure also draws every set's curves.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust.choose_k import CRITERIA, classical_curves, eigengap_curve, kmeans_partitions, pick_k, smoothed_features, stability_curve  # noqa: E402
from otclust.metrics import cluster_accuracy  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(dims)


def _blobs(sizes, dim, std, seed):
    from sklearn.datasets import make_blobs

    return make_blobs(n_samples=list(sizes), n_features=dim, cluster_std=std, random_state=seed)


def _long_tailed(x, y, ratio, seed=0):
    classes = np.unique(y)
    largest = np.bincount(y).min()
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(y == c), max(1, int(round(largest * ratio ** (-r / (len(classes) - 1))))), replace=False) for r, c in enumerate(classes)]
    keep = np.sort(np.concatenate(keep))
    return x[keep], y[keep]


def feature_sets(names: list[str], extra: list[str] = ()):
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    digits_x, digits_y = load_digits(return_X_y=True)
    makers = {
        "blobs-3": lambda: _blobs([500, 200, 60], 10, 1.5, 0),
        "blobs-5": lambda: _blobs([400, 250, 150, 80, 40], 16, 2.0, 1),
        "blobs-8": lambda: _blobs([300, 250, 200, 150, 100, 80, 50, 30], 32, 2.5, 2),
        "digits": lambda: (digits_x, digits_y),
        "digits-pca20": lambda: (PCA(20, random_state=0).fit_transform(digits_x), digits_y),
        "digits-lt10": lambda: _long_tailed(digits_x, digits_y, 10),
    }
    if (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        images = _idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz")[:5000].reshape(5000, -1).astype(np.float64)
        labels = _idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")[:5000].astype(np.int64)
        makers["fashion-mnist-5k"] = lambda: (images, labels)
        makers["fashion-mnist-5k-pca50"] = lambda: (PCA(50, random_state=0).fit_transform(images), labels)
    for spec in extra:
        # Own names: the Fashion-MNIST makers above read `labels` when called, after this loop.
        name, _, paths = spec.partition("=")
        features_path, _, labels_path = paths.partition(",")
        makers[name] = lambda f=features_path, y=labels_path: (np.load(f), np.load(y))
        names = [*names, name]
    for name in names:
        if name not in makers:
            raise SystemExit(f"unknown set '{name}': choose from {', '.join(makers)}")
        x, y = makers[name]()
        yield name, np.asarray(x, dtype=np.float64), np.asarray(y)


def null_referenced_k(x: np.ndarray, stability: dict[int, float], seed: int) -> int:
    """Clest (Dudoit & Fridlyand 2002), an ablation: the K whose stability most exceeds that of a
    null reference, the same features with each column permuted on its own (structure gone,
    marginals kept), smoothed and scored the same way."""
    rng = np.random.default_rng(seed)
    null = np.column_stack([rng.permutation(column) for column in x.T])
    null_curve = stability_curve(smoothed_features(null), list(stability), seed)
    return max(stability, key=lambda k: stability[k] - null_curve[k])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="blobs-3,blobs-5,blobs-8,digits,digits-pca20,digits-lt10,fashion-mnist-5k,fashion-mnist-5k-pca50")
    parser.add_argument("--features", action="append", default=[], help="NAME=FEATURES.npy,LABELS.npy: a saved feature set")
    parser.add_argument("--k-min", type=int, default=2)
    parser.add_argument("--k-max", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figure", default=None, help="PNG path for the curves")
    parser.add_argument("--null-reference", action="store_true", help="add the K of a null-referenced stability (Clest; docs/ablations.md, 'Choosing K'): twice the stability runs")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    ks = range(args.k_min, args.k_max + 1)
    names = [n for n in args.sets.split(",") if n and n != "none"]
    null_column = ["K by stability vs null"] if args.null_reference else []
    print("| " + " | ".join(["features", "N", "true K", *(f"K by {c}" for c in CRITERIA), *null_column, "ACC at true K", *(f"ACC by {c}" for c in CRITERIA), "seconds"]) + " |")
    print("| --- " * (5 + 2 * len(CRITERIA) + len(null_column)) + "|")
    all_curves = {}
    for name, x, y in feature_sets(names, args.features):
        started = time.perf_counter()
        true_k = len(np.unique(y))
        points = smoothed_features(x)
        curves = {"stability": stability_curve(points, ks, args.seed), "eigengap": eigengap_curve(x, ks, seed=args.seed), **classical_curves(points, kmeans_partitions(points, ks, args.seed), args.seed)}
        partitions = kmeans_partitions(points, sorted({true_k, *(pick_k(c, curves[c]) for c in CRITERIA)}), args.seed)
        chosen = {c: pick_k(c, curves[c]) for c in CRITERIA}
        accuracy = {k: cluster_accuracy(y, labels) for k, labels in partitions.items()}
        all_curves[name] = (true_k, curves)
        null_cell = [str(null_referenced_k(x, curves["stability"], args.seed))] if args.null_reference else []
        cells = [name, str(len(y)), str(true_k)] + [str(chosen[c]) for c in CRITERIA] + null_cell + [f"{accuracy[true_k]:.3f}"] + [f"{accuracy[chosen[c]]:.3f}" for c in CRITERIA]
        print("| " + " | ".join(cells) + f" | {time.perf_counter() - started:.0f} |", flush=True)
        print(f"{name} stability: " + " ".join(f"{k}:{v:.3f}" for k, v in curves["stability"].items()), file=sys.stderr, flush=True)
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(all_curves), len(CRITERIA), figsize=(3.2 * len(CRITERIA), 2.2 * len(all_curves)), squeeze=False)
        for row, (name, (true_k, curves)) in enumerate(all_curves.items()):
            for col, criterion in enumerate(CRITERIA):
                ax = axes[row][col]
                ax.plot(list(curves[criterion]), list(curves[criterion].values()), marker=".")
                ax.axvline(true_k, color="grey", linestyle=":")
                ax.axvline(pick_k(criterion, curves[criterion]), color="red", linestyle="--")
                ax.set_title(f"{name}: {criterion}", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.figure, dpi=90)


if __name__ == "__main__":
    main()

"""Where the smoothed read-out's time goes, and its restart choice with and without skipping.

    python benchmarks/readout_speed.py --features fm70k.npy --threads 2
    python benchmarks/readout_speed.py --samples 70000 --dim 256 --threads 2
    python benchmarks/readout_speed.py --samples 70000 --dim 256 --device cuda   # as fit on a GPU

On N x D features (a file written by `otclust embed --out`, or a Gaussian mixture of 10
classes), times each part of `fit_readout("smoothed", ...)` with the default read-out settings:
the kNN search (exact, and as --cpu-amp runs it), the smoothing, the k-means restarts with the restart choice under equal sizes,
the logistic regression. Then, in the same run, the restart choice as it ran before 2026-12-03:
the same restarts, an OT solve (`size_constrained_inertia`) for every distinct partition, where
today's choice stops once the plain inertia of the next partition exceeds the best cost found,
and skips a partition whose dual bound (`size_constrained_lower_bound`, a few Sinkhorn
iterations) already exceeds it; and the choice with the plain-inertia stop alone (as it ran from
2026-12-03 until the dual bound, 2026-12-05). Prints a Markdown table, the OT solves of each and
whether all keep the same partition.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust.metrics import cluster_accuracy  # noqa: E402
from otclust.ot import size_constrained_inertia  # noqa: E402
from otclust.readout import ReadoutParams, choose_kmeans_restart, kmeans_restarts, nearest_neighbors, smoothed_unit_features  # noqa: E402
from otclust.readout.kmeans import _partition_key  # noqa: E402
from otclust.readout.stage import fit_linear_readout  # noqa: E402

kmeans_module = importlib.import_module("otclust.readout.kmeans")  # the package exports a function of that name


def timed(function, *args, **kwargs):
    """(result, seconds), the seconds ending when a GPU in use has finished the work."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def choice_without_skipping(points: torch.Tensor, n_clusters: int, seed: int, restarts: int):
    """The restart choice under equal sizes as it ran before: every distinct partition solved.
    Returns (the restart kept, how many distinct partitions were solved)."""
    distinct = {}
    for end in kmeans_restarts(points, n_clusters, seed, restarts):
        distinct.setdefault(_partition_key(end.labels), end)
    return min(distinct.values(), key=lambda end: size_constrained_inertia(points, end.centers, None)), len(distinct)


def counting_solves():
    """Wrap the read-out's OT solve to count its calls."""
    calls = []
    original = kmeans_module.size_constrained_inertia

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    kmeans_module.size_constrained_inertia = counted
    return calls, original


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", help="FILE.npy of otclust embed --out (its .labels.npy is used to score)")
    parser.add_argument("--samples", type=int, default=70000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="where the features are, as `fit` keeps them: the kNN search and smoothing run there, k-means on the CPU")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    labels = None
    if args.features:
        x = torch.from_numpy(np.load(args.features)).float()
        label_file = Path(args.features).with_suffix(".labels.npy")
        labels = np.load(label_file) if label_file.exists() else None
    else:
        rng = np.random.default_rng(0)
        labels = rng.integers(args.clusters, size=args.samples)
        centres = rng.normal(size=(args.clusters, args.dim))
        x = torch.from_numpy((centres[labels] + rng.normal(size=(args.samples, args.dim))).astype(np.float32))
    x = x.to(args.device)
    p = ReadoutParams()
    index, knn_s = timed(nearest_neighbors, x, p.neighbors)
    # --cpu-amp's search: a bfloat16 pass, its candidates ranked again in float32 (otclust.precision).
    coarse_index, coarse_s = timed(nearest_neighbors, x, p.neighbors, search_dtype=torch.bfloat16)
    agreement = float((coarse_index[:, :, None] == index[:, None, :]).any(dim=2).float().mean())
    smoothed, smooth_s = timed(smoothed_unit_features, x, p.neighbors, p.rounds, index)
    calls, original = counting_solves()
    chosen, kmeans_s = timed(choose_kmeans_restart, smoothed, args.clusters, 0, p.restarts, p.choice, None)
    solves = len(calls)
    kmeans_module.size_constrained_inertia = original
    _, logistic_s = timed(fit_linear_readout, F.normalize(x, dim=1), chosen.labels, args.clusters, 0)
    (before, distinct), before_s = timed(choice_without_skipping, smoothed, args.clusters, 0, p.restarts)
    calls, original = counting_solves()
    bound = kmeans_module.size_constrained_lower_bound
    kmeans_module.size_constrained_lower_bound = lambda *args, **kwargs: -float("inf")
    plain, plain_s = timed(choose_kmeans_restart, smoothed, args.clusters, 0, p.restarts, p.choice, None)
    plain_solves = len(calls)
    kmeans_module.size_constrained_inertia, kmeans_module.size_constrained_lower_bound = original, bound
    acc = f"{cluster_accuracy(labels, chosen.labels):.3f}" if labels is not None else "-"
    print(f"{len(x):,} x {x.shape[1]} features on {x.device}, {threads} threads, {p.restarts} restarts, {p.rounds} smoothing rounds over {p.neighbors} neighbours")
    print("| part | seconds |")
    print("| --- | --- |")
    for name, seconds in (
        ("kNN search", knn_s),
        (f"kNN search, bfloat16 pass + float32 re-ranking (--cpu-amp; {100 * agreement:.2f}% of the neighbours the same)", coarse_s),
        ("smoothing", smooth_s),
        (f"k-means restarts and the choice under equal sizes ({solves} OT solves)", kmeans_s),
        ("logistic regression", logistic_s),
        (f"the same restarts, every distinct partition solved ({distinct} OT solves; before 2026-12-03)", before_s),
        (f"the same restarts, stopped by the plain inertia only ({plain_solves} OT solves; before the dual bound, 2026-12-05)", plain_s),
    ):
        print(f"| {name} | {seconds:.1f} |")
    same = _partition_key(before.labels) == _partition_key(chosen.labels) == _partition_key(plain.labels)
    print(f"read-out total: {knn_s + smooth_s + kmeans_s + logistic_s:.1f} s; ACC of its k-means partition: {acc}; the same partition as before: {same}")


if __name__ == "__main__":
    main()

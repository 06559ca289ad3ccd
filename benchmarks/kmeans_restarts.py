"""How often one k-means++ restart finds the lowest-inertia partition of a CLOT run's features.

    python benchmarks/kmeans_restarts.py runs/fm-s2 --restarts 50 --rounds 0,5

For each feature version (rounds=0: the unit backbone features; rounds=R: smoothed over
--neighbors nearest neighbours R times, as the smoothed read-out does), runs --restarts single-restart
k-means (`kmeans_restarts`, seeded by the run's seed, as the read-out) and prints one row per
distinct partition: inertia, inertia under equal cluster sizes (`size_constrained_inertia`, what
the read-out's choice=prior compares), ACC/NMI there, and how many restarts ended in it.
The lowest of each cost is marked. Labels are used only to score.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust.data import load_dataset  # noqa: E402
from otclust.engine import embed_in_batches, load_trained  # noqa: E402
from otclust.readout import kmeans_restarts, nearest_neighbors, smooth_over_neighbors  # noqa: E402
from otclust.ot import size_constrained_inertia  # noqa: E402
from otclust.metrics import evaluate_clustering  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder of otclust fit --method clot")
    parser.add_argument("--restarts", type=int, default=50)
    parser.add_argument("--rounds", default="0,5")
    parser.add_argument("--neighbors", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    method, config = load_trained(Path(args.run) / "model.pt", device="cpu")
    dataset = load_dataset(config.data, split=config.split)
    features = torch.from_numpy(embed_in_batches(method, dataset.data, torch.device("cpu")))
    unit = F.normalize(features, dim=1)
    neighbors = nearest_neighbors(features, args.neighbors)
    print("| features | inertia | inertia under equal sizes | ACC | NMI | restarts ending there |")
    print("| --- | --- | --- | --- | --- | --- |")
    for rounds in [int(r) for r in args.rounds.split(",")]:
        x = unit if rounds == 0 else F.normalize(smooth_over_neighbors(unit, neighbors, rounds), dim=1)
        ends = Counter()
        partitions = {}
        for end in kmeans_restarts(x, method.n_clusters, config.seed, args.restarts):
            key = round(end.inertia, 6)  # restarts ending in the same partition share its inertia
            ends[key] += 1
            partitions.setdefault(key, end)
        prior_cost = {key: size_constrained_inertia(x, end.centers) * len(x) for key, end in partitions.items()}
        name = "plain" if rounds == 0 else f"smoothed ({args.neighbors} neighbours, {rounds} rounds)"
        for key in sorted(ends):
            scores = evaluate_clustering(dataset.labels, partitions[key].labels)
            inertia = f"**{key:.0f}**" if key == min(ends) else f"{key:.0f}"
            constrained = f"**{prior_cost[key]:.0f}**" if prior_cost[key] == min(prior_cost.values()) else f"{prior_cost[key]:.0f}"
            print(f"| {name} | {inertia} | {constrained} | {scores['acc']:.3f} | {scores['nmi']:.3f} | {ends[key]} of {args.restarts} |", flush=True)

if __name__ == "__main__":
    main()

"""How often one k-means++ restart finds the lowest-inertia partition of a CLOT run's features.

    python benchmarks/kmeans_restarts.py runs/fm-s2 --restarts 30 --rounds 0,5

For each feature version (rounds=0: the unit backbone features; rounds=R: smoothed over
--neighbors nearest neighbours R times, as CLOT's read-out does), runs --restarts single-restart
k-means (seeds 0, 1, ...) and prints one row per distinct partition: inertia, ACC/NMI there, and
how many restarts ended in it. Labels are used only to score.
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
from otclust.methods.clot import nearest_neighbors, smooth_over_neighbors  # noqa: E402
from otclust.metrics import evaluate_clustering  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder of otclust fit --method clot")
    parser.add_argument("--restarts", type=int, default=30)
    parser.add_argument("--rounds", default="0,5")
    parser.add_argument("--neighbors", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sklearn.cluster import KMeans

    method, config = load_trained(Path(args.run) / "model.pt", device="cpu")
    dataset = load_dataset(config.data, split=config.split)
    features = torch.from_numpy(embed_in_batches(method, dataset.data, torch.device("cpu")))
    unit = F.normalize(features, dim=1)
    neighbors = nearest_neighbors(features, args.neighbors)
    print("| features | inertia | ACC | NMI | restarts ending there |")
    print("| --- | --- | --- | --- | --- |")
    for rounds in [int(r) for r in args.rounds.split(",")]:
        x = unit if rounds == 0 else F.normalize(smooth_over_neighbors(unit, neighbors, rounds), dim=1)
        x = x.double().numpy()
        ends = Counter()
        scores = {}
        for seed in range(args.restarts):
            model = KMeans(method.n_clusters, n_init=1, random_state=seed).fit(x)
            key = round(model.inertia_)  # restarts ending in the same partition share its inertia
            ends[key] += 1
            scores.setdefault(key, evaluate_clustering(dataset.labels, model.labels_))
        name = "plain" if rounds == 0 else f"smoothed ({args.neighbors} neighbours, {rounds} rounds)"
        for key in sorted(ends):
            print(f"| {name} | {key} | {scores[key]['acc']:.3f} | {scores[key]['nmi']:.3f} | {ends[key]} of {args.restarts} |", flush=True)


if __name__ == "__main__":
    main()

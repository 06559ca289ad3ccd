"""How the smoothed k-means read-out scores with each neighbour smoothing, on trained run folders.

    python benchmarks/smoothing.py runs/fm-s0 runs/fm-s2 --neighbors 10,20,50 --rounds 0,3,5,10 --restarts 10,50
    python benchmarks/smoothing.py runs/fm-s1 --neighbors 10 --rounds 5 --restarts 50 --choices prior,inertia

For each run (a folder of `otclust fit`, any method), the training data are embedded once and
their nearest neighbours mined once; then, for every (neighbours, rounds) pair, the read-out
(`otclust.readout.fit_readout`, as at the end of training) is refitted and the whole training
set is predicted with it. rounds=0 is the kmeans read-out (nearest centre). Labels are used
only to score. --restarts: k-means++ restarts; --choices: which restart is kept (`prior`: the
lowest inertia under equal cluster sizes, `inertia`: plain k-means'). Prints a Markdown table,
one row per run and setting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust.data import load_dataset  # noqa: E402
from otclust.engine import embed_in_batches, load_trained  # noqa: E402
from otclust.readout import ReadoutParams, fit_readout, nearest_neighbors  # noqa: E402
from otclust.metrics import evaluate_clustering  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders of otclust fit")
    parser.add_argument("--neighbors", default="10,20,50")
    parser.add_argument("--rounds", default="0,3,5,10")
    parser.add_argument("--restarts", default="50", help="k-means restarts, e.g. 10,50")
    parser.add_argument("--choices", default="prior", help="restart choice(s), e.g. prior,inertia")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    neighbor_counts = [int(k) for k in args.neighbors.split(",")]
    round_counts = [int(r) for r in args.rounds.split(",")]
    restart_counts = [int(r) for r in args.restarts.split(",")]
    choices = args.choices.split(",")

    print("| run | neighbours | rounds | restarts | choice | ACC | NMI | ARI | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        method, config = load_trained(Path(run) / "model.pt", device="cpu")
        dataset = load_dataset(config.data, split=config.split)
        if dataset.labels is None:
            sys.exit(f"error: {config.data} has no labels to score against")
        features = torch.from_numpy(embed_in_batches(method, dataset.data, torch.device("cpu")))
        mined = nearest_neighbors(features, max(neighbor_counts))  # sorted, so the first k columns are the k nearest
        settings = [(k, rounds, restarts, choice) for k in neighbor_counts for rounds in round_counts for restarts in restart_counts for choice in choices]
        # plain k-means (0 rounds) ignores the neighbours: one row per restart count is enough
        settings = [(k, r, n, c) for k, r, n, c in settings if r > 0 or k == neighbor_counts[0]]
        for k, rounds, restarts, choice in settings:
            params = ReadoutParams(neighbors=k, rounds=rounds, restarts=restarts, choice=choice).validate()
            started = time.perf_counter()
            name = "smoothed" if rounds > 0 else "kmeans"
            fitted = fit_readout(name, features, method.n_clusters, config.seed, params, method.prior_mode, method.cluster_prior, neighbor_index=mined[:, :k])
            seconds = time.perf_counter() - started
            scores = evaluate_clustering(dataset.labels, fitted.logits(features).argmax(dim=1).numpy())
            shown_k = "-" if rounds == 0 else k
            print(f"| {run} | {shown_k} | {rounds} | {restarts} | {choice} | {scores['acc']:.4f} | {scores['nmi']:.4f} | {scores['ari']:.4f} | {seconds:.1f} |", flush=True)

if __name__ == "__main__":
    main()

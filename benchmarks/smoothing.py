"""How the smoothed k-means read-out scores with each neighbour smoothing, on trained run folders.

    python benchmarks/smoothing.py runs/fm-s0 runs/fm-s2 --neighbors 10,20,50 --rounds 0,3,5,10 --restarts 10,50
    python benchmarks/smoothing.py runs/fm-s1 --neighbors 10 --rounds 5 --restarts 50 --choices prior,inertia
    python benchmarks/smoothing.py runs/fm-s1 --neighbors 10 --rounds 5 --restarts 10,50 --head-start false,true

For each run (a folder of `otclust fit`, any method), the training data are embedded once and
their nearest neighbours mined once; then, for every (neighbours, rounds) pair, the read-out
(`otclust.readout.fit_readout`, as at the end of training) is refitted and the whole training
set is predicted with it. rounds=0 is the kmeans read-out (nearest centre). Labels are used
only to score. --restarts: k-means++ restarts; --choices: which restart is kept (`prior`: the
lowest inertia under equal cluster sizes, `inertia`: plain k-means'); --head-start: whether one
more k-means run, started from the network head's clusters, is a candidate. The neighbours are
searched as the run searched them (bfloat16 and an exact re-ranking under cpu_amp). Prints a
Markdown table, one row per run and setting, with the seconds of each read-out fit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust.data import load_dataset  # noqa: E402
from otclust.engine import embed_in_batches, load_trained, predict_in_batches  # noqa: E402
from otclust.precision import resolve_precision  # noqa: E402
from otclust.readout import ReadoutParams, fit_readout, nearest_neighbors  # noqa: E402
from otclust.metrics import evaluate_clustering  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders of otclust fit")
    parser.add_argument("--neighbors", default="10,20,50")
    parser.add_argument("--rounds", default="0,3,5,10")
    parser.add_argument("--restarts", default="50", help="k-means restarts, e.g. 10,50")
    parser.add_argument("--choices", default="prior", help="restart choice(s), e.g. prior,inertia")
    parser.add_argument("--head-start", default="false", help="without and/or with the head's partition as a candidate, e.g. false,true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    neighbor_counts = [int(k) for k in args.neighbors.split(",")]
    round_counts = [int(r) for r in args.rounds.split(",")]
    restart_counts = [int(r) for r in args.restarts.split(",")]
    choices = args.choices.split(",")
    head_starts = [value.strip().lower() for value in args.head_start.split(",")]
    if not set(head_starts) <= {"true", "false"}:
        parser.error(f"--head-start takes true and/or false, e.g. false,true; got {args.head_start!r}")
    head_starts = [value == "true" for value in head_starts]

    print("| run | neighbours | rounds | restarts | choice | head start | ACC | NMI | ARI | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        method, config = load_trained(Path(run) / "model.pt", device="cpu")
        dataset = load_dataset(config.data, split=config.split)
        if dataset.labels is None:
            sys.exit(f"error: {config.data} has no labels to score against")
        cpu = torch.device("cpu")
        features = torch.from_numpy(embed_in_batches(method, dataset.data, cpu))
        method.predictor = "head"
        head_labels = predict_in_batches(method, dataset.data, cpu).argmax(axis=1)
        search_dtype = resolve_precision(False, config.cpu_amp, cpu).search_dtype
        mined = nearest_neighbors(features, max(neighbor_counts), search_dtype=search_dtype)  # sorted, so the first k columns are the k nearest
        settings = [(k, r, n, c, h) for k in neighbor_counts for r in round_counts for n in restart_counts for c in choices for h in head_starts]
        # plain k-means (0 rounds) ignores the neighbours: one row per restart count is enough
        settings = [(k, r, n, c, h) for k, r, n, c, h in settings if r > 0 or k == neighbor_counts[0]]
        for k, rounds, restarts, choice, head_start in settings:
            params = ReadoutParams(neighbors=k, rounds=rounds, restarts=restarts, choice=choice).validate()
            started = time.perf_counter()
            name = "smoothed" if rounds > 0 else "kmeans"
            start = head_labels if head_start else None
            fitted = fit_readout(name, features, method.n_clusters, config.seed, params, method.prior_mode, method.cluster_prior, mined[:, :k], start)
            seconds = time.perf_counter() - started
            scores = evaluate_clustering(dataset.labels, fitted.logits(features).argmax(dim=1).numpy())
            shown_k = "-" if rounds == 0 else k
            print(f"| {run} | {shown_k} | {rounds} | {restarts} | {choice} | {'yes' if head_start else 'no'} | {scores['acc']:.4f} | {scores['nmi']:.4f} | {scores['ari']:.4f} | {seconds:.1f} |", flush=True)

if __name__ == "__main__":
    main()

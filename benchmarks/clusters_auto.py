"""`otclust fit --clusters auto` end to end: is the true K chosen, and what does a wrong K cost?

    python benchmarks/clusters_auto.py                                  # digits and the dev sets, seed 0
    python benchmarks/clusters_auto.py --datasets strokes,fmnist-test --fixed-from bench-out/generalization

For each data set of the generalisation suite (benchmarks/suite_data.py) and seed, two runs of the
same method with its defaults and no --config: one told the true K, one given `--clusters auto`
(K searched in 2-15: the search run trains with 15 clusters, K is chosen after training by the
criterion of otclust.choose_k on the read-out's features, then the network trains again with the
chosen K, otclust.k_search). ACC at the chosen K is given twice: of the final run, and of the
search run read out at that K (what --no-refit gives). Every criterion is also computed here on
the search network's features: stability, the eigengap, and the classical baselines, the
silhouette and the Calinski-Harabasz index. ACC at a K other than the true one is Hungarian-matched (the extra
clusters or classes count as wrong). --fixed-from reuses finished fixed-K runs of
benchmarks/generalization.py (same data set, method, seed and no extra flags) instead of
training them again. Prints a Markdown table and writes it to OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import generalization  # noqa: E402
import suite_data  # noqa: E402

from otclust.choose_k import classical_curves, eigengap_curve, kmeans_partitions, pick_k, smoothed_features, stability_curve  # noqa: E402

DEFAULT_DATASETS = ("digits", *suite_data.DEV_SETS)


def fixed_k_result(suite_set, method: str, seed: int, out: Path, fixed_from: Path | None, threads: int, commit: str):
    """The run told the true K: reused from a generalization.py folder when it finished there."""
    if fixed_from is not None:
        found = generalization.read_finished(generalization.run_folder(fixed_from, suite_set.name, method, seed), [])
        if found is not None:
            return found, generalization.run_folder(fixed_from, suite_set.name, method, seed)
    folder = generalization.run_folder(out / "fixed", suite_set.name, method, seed)
    result = generalization.read_finished(folder, []) or generalization.run_one(suite_set, method, seed, out / "fixed", [], threads, None, commit)
    return result, folder


def search_run(run: Path) -> Path:
    """The run that chose K: kept in k-search/ when a refit followed, else the auto run itself."""
    return run / "k-search" if (run / "k-search" / "metrics.json").is_file() else run


def baseline_ks(run: Path, suite_set, k_range: tuple[int, int], seed: int, threads: int) -> dict[str, int]:
    """The K each criterion picks on the search network's features: stability, the silhouette and
    the Calinski-Harabasz index on the smoothed ones, the eigengap on the kNN graph of the unsmoothed."""
    run = search_run(run)
    features = run / "features.npy"
    if not features.is_file():
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
        data = ["--data", suite_set.data] + (["--split", suite_set.split] if suite_set.split != "all" else [])
        command = [sys.executable, "-m", "otclust", "embed", *data, "--backbone", f"otclust:{run / 'model.pt'}", "--out", str(features), "--overwrite", "--no-progress"]
        subprocess.run(command, check=True, capture_output=True, env=env)
    raw = np.load(features)
    points = smoothed_features(raw)
    ks = range(k_range[0], k_range[1] + 1)
    curves = {**classical_curves(points, kmeans_partitions(points, ks, seed), seed), "stability": stability_curve(points, ks, seed), "eigengap": eigengap_curve(raw, ks, seed=seed)}
    return {name: pick_k(name, curves[name]) for name in ("stability", "eigengap", "silhouette", "calinski_harabasz")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help="comma-separated suite sets; 'dev' for the development sets (default: %(default)s)")
    parser.add_argument("--method", default="clot")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--range", default="2-15", help="K searched (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "clusters-auto")
    parser.add_argument("--fixed-from", type=Path, default=None, help="a benchmarks/generalization.py --out folder whose fixed-K runs to reuse")
    parser.add_argument("--data-root", type=Path, default=suite_data.DEFAULT_ROOT)
    parser.add_argument("--fashion-dir", type=Path, default=None)
    args = parser.parse_args()

    names = [n for part in args.datasets.split(",") for n in (suite_data.DEV_SETS if part == "dev" else [part])]
    k_range = tuple(int(v) for v in args.range.split("-"))
    seeds = [int(s) for s in args.seeds.split(",")]
    commit = generalization.git_commit()
    rows = ["| data set | seed | true K | chosen K (the run's criterion) | stability | eigengap | silhouette | CH | ACC at true K | ACC at chosen K | the same, no refit | minutes (auto run) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        suite_set = suite_data.build(name, root=args.data_root, fashion_dir=args.fashion_dir)
        for seed in seeds:
            fixed, _ = fixed_k_result(suite_set, args.method, seed, args.out, args.fixed_from, args.threads, commit)
            flags = ["--clusters", f"auto:{k_range[0]}-{k_range[1]}"]
            auto = generalization.read_finished(generalization.run_folder(args.out / "auto", name, args.method, seed), flags)
            if auto is None:
                auto = generalization.run_one(suite_set, args.method, seed, args.out / "auto", flags, args.threads, None, commit)
            if auto.metrics is None or fixed.metrics is None:
                rows.append(f"| {name} | {seed} | {suite_set.clusters} | failed: {auto.error or fixed.error} | | | | | | | | |")
                continue
            folder = generalization.run_folder(args.out / "auto", name, args.method, seed)
            baselines = baseline_ks(folder, suite_set, k_range, seed, args.threads)
            selection = auto.metrics["k_selection"]
            searched = json.loads((search_run(folder) / "metrics.json").read_text())
            rows.append(f"| {name} | {seed} | {suite_set.clusters} | {selection['chosen']} ({selection['criterion']}) | {baselines['stability']} | {baselines['eigengap']} | {baselines['silhouette']} | {baselines['calinski_harabasz']} | "
                        f"{fixed.metrics['acc']:.3f} | {auto.metrics['acc']:.3f} | {searched['acc']:.3f} | {auto.wall_seconds / 60:.1f} |")  # fmt: skip
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    print(json.dumps({"method": args.method, "range": args.range, "commit": commit}))


if __name__ == "__main__":
    main()

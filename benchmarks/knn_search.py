"""Nearest neighbours of every row of a large feature set: brute force against inverted lists.

    python benchmarks/knn_search.py --features FILE.npy --threads 2    # FILE.npy: otclust embed --out
    python benchmarks/knn_search.py --threads 2                         # Fashion-MNIST's 70,000 images as pixels

otclust mines each row's k nearest rows (cosine) for CLOT's neighbour views, the smoothed
read-out and `otclust embed`. Rows, each on the same features, k = 10:

- brute force, float32: every pair (`nearest_neighbors(..., cells=0)`), the exact reference;
- brute force, bfloat16 + re-rank: the same in bfloat16, its best 2k + 16 ranked again in
  float32 (what the search was under --cpu-amp until 2026-12-05);
- cells, P probes: the search by inverted lists (`otclust.readout.neighbors._search_by_cells`,
  the default from 200,000 rows): sqrt(N) cells of a spherical k-means on a sample, each row
  compared exactly with the rows of its P nearest cells;
- faiss IVF, P probes (a peer, when `faiss` can be imported; not a dependency of otclust):
  `IndexIVFFlat` on the unit rows, inner product, sqrt(N) lists, training and search timed.

recall: the share of the exact k nearest neighbours each search returns (mean over rows).
Seconds are the fastest of --repeats runs, setup (cells, training) included.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust.readout.neighbors import nearest_neighbors  # noqa: E402


def fastest(search, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = search()
        best = min(best, time.perf_counter() - start)
    return best, result


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    hits = 0.0
    for start in range(0, len(exact), 8192):  # rows x k x k booleans a block at a time
        block = found[start : start + 8192, :, None] == exact[start : start + 8192, None, :]
        hits += float(block.any(-1).float().sum())
    return hits / exact.numel()


def faiss_search(features: torch.Tensor, k: int, cells: int, probes: int, threads: int):
    import faiss

    faiss.omp_set_num_threads(threads)
    unit = np.ascontiguousarray(F.normalize(features.float(), dim=1).numpy())
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(unit.shape[1]), unit.shape[1], cells, faiss.METRIC_INNER_PRODUCT)
    index.train(unit)
    index.add(unit)
    index.nprobe = probes
    _, found = index.search(unit, k + 1)
    found = torch.from_numpy(found)
    own = found == torch.arange(len(found))[:, None]
    # drop each row itself (or, where it was not found, the last), keeping the order
    keep = torch.where(own.any(1, keepdim=True), ~own, torch.arange(k + 1)[None, :] < k)
    return found[keep].view(len(found), k)


def load_features(path: str | None, rows: int | None) -> tuple[torch.Tensor, str]:
    if path:
        features, name = torch.from_numpy(np.load(path)).float(), Path(path).name
    else:
        from otclust.data import load_dataset

        data = load_dataset("fashion-mnist", split="all")
        features, name = data.data.reshape(len(data.data), -1).float(), "Fashion-MNIST pixels"
    if rows:
        features = features[:rows]
    return features, name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", help="N x D .npy (default: Fashion-MNIST's 70,000 images as pixels)")
    parser.add_argument("--rows", type=int, help="only the first ROWS rows")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--probes", default="4,8,16", help="probed cells, one row each")
    parser.add_argument("--cells", type=int, help="cells (default: sqrt(N), as otclust chooses)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-faiss", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    features, name = load_features(args.features, args.rows)
    n, k = len(features), args.k
    cells = args.cells or round(n**0.5)
    print(f"{name}: {n:,} x {features.shape[1]}, k {k}, {cells} cells, {args.threads} thread(s), torch {torch.__version__}")
    seconds, exact = fastest(lambda: nearest_neighbors(features, k, cells=0), args.repeats)
    rows = [("brute force, float32 (exact)", seconds, 1.0)]
    seconds, found = fastest(lambda: nearest_neighbors(features, k, cells=0, search_dtype=torch.bfloat16), args.repeats)
    rows.append(("brute force, bfloat16 + re-rank", seconds, recall(found, exact)))
    probes = [int(p) for p in args.probes.split(",")]
    for p in probes:
        seconds, found = fastest(lambda: nearest_neighbors(features, k, cells=cells, probes=p), args.repeats)
        rows.append((f"cells, {p} probes", seconds, recall(found, exact)))
    if not args.no_faiss:
        try:
            import faiss  # noqa: F401
        except ImportError:
            print("faiss not importable: its rows are left out (pip install faiss-cpu to add them)")
        else:
            for p in probes:
                seconds, found = fastest(lambda: faiss_search(features, k, cells, p, args.threads), args.repeats)
                rows.append((f"faiss IVF, {p} probes", seconds, recall(found, exact)))
    reference = rows[0][1]
    print("| search | seconds | recall of the exact 10 | speed-up |".replace("10", str(k)))
    print("| --- | --- | --- | --- |")
    for label, seconds, share in rows:
        print(f"| {label} | {seconds:.2f} | {share:.4f} | {reference / seconds:.1f}x |")


if __name__ == "__main__":
    main()

"""Nearest neighbours in feature space and the smoothing of features over them.

Shared by the read-out (smoothed k-means), CLOT's neighbour views and its size estimate.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse

from otclust.distributed import all_gather_rows, is_distributed, rank, world_size


# From this many rows on, the search is by inverted lists (`_search_by_cells`), not brute force.
# Brute force costs N^2 x D: on 2 CPU cores 2-3.5 minutes a search at 210,000 x 256 (bfloat16 /
# float32, benchmarks/knn_search.py) and about an hour at a million; the cells about N^1.5 x D. Below it brute force stays: at 70,000 the cells were 7x
# faster than the bfloat16 search and kept more of the exact neighbours, but the Fashion-MNIST
# recipe's read-out then chose a worse partition on one seed of three (docs/performance.md).
CELLS_FROM = 200_000
# CLOT's neighbour views (training only) search by cells from this many rows on: a view from the
# 10 nearest needs no exact order, and the Fashion-MNIST recipe mines six times at 70,000 rows.
MINING_CELLS_FROM = 50_000
NEIGHBOR_SEARCHES = ("auto", "exact", "cells")
# Cells probed per query: on 70,000 Fashion-MNIST features (benchmarks/knn_search.py) 8 of
# sqrt(N) cells keep 99.7 % of the exact 10 nearest neighbours.
PROBES = 8


def nearest_neighbors(features: torch.Tensor, k: int, chunk: int = 1024, search_dtype: torch.dtype | None = None, cells: int | None = None, probes: int = PROBES) -> torch.Tensor:
    """N x k indices of each row's k most cosine-similar other rows (itself excluded), nearest first.

    Brute force in row chunks: a chunk x N similarity block at a time (1024 x 70,000 floats is
    290 MB), on the GPU when the features are. With several processes (each holding all the
    features) every process ranks a contiguous share of the rows and the shares are gathered, so
    the work is split instead of repeated.

    `search_dtype` (bfloat16 under --cpu-amp): the block is computed in that dtype, whose
    rounding (about 0.004 near a similarity of 1) blurs the order among close neighbours; the
    coarse_candidates(k) = 2k + 16 best of that pass are then ranked again by exact float32 similarity. A
    neighbour can be missed only for another within that rounding of it. None: exact.

    `cells` (default: none below CELLS_FROM rows, about sqrt(N) from there): search by inverted
    lists instead, as IVF indexes do (`_search_by_cells`): exact float32 similarities, but only to
    the rows of the `probes` cells nearest each row, so a neighbour in a cell not probed is missed
    (`search_dtype` is then not needed and not used)."""
    unit = F.normalize(features.float(), dim=1)
    k = min(k, len(unit) - 1)
    share = -(-len(unit) // world_size())
    first = rank() * share if is_distributed() else 0
    last = min(len(unit), first + share)
    if cells is None:
        cells = search_cells(len(unit), "auto", CELLS_FROM)
    if cells > 1 and k > 0:
        return all_gather_rows(_search_by_cells(unit, k, min(cells, len(unit)), probes, first, last))
    return all_gather_rows(_brute_force(unit, k, chunk, search_dtype, first, last))


def search_cells(n_rows: int, search: str, cells_from: int = CELLS_FROM) -> int:
    """The `cells` argument of nearest_neighbors for a search of `n_rows` rows: "exact" brute
    force (0), "cells" about sqrt(N) cells, "auto" cells from `cells_from` rows on."""
    if search not in NEIGHBOR_SEARCHES:
        raise ValueError(f"search must be one of {NEIGHBOR_SEARCHES}, got {search!r}")
    if search == "exact" or (search == "auto" and n_rows < cells_from):
        return 0
    return round(n_rows**0.5)


def _brute_force(unit: torch.Tensor, k: int, chunk: int, search_dtype: torch.dtype | None, first: int, last: int) -> torch.Tensor:
    """nearest_neighbors of rows first..last by every row's similarity."""
    coarse = unit if search_dtype is None else unit.to(search_dtype)
    wide = k if search_dtype is None else min(coarse_candidates(k), len(unit) - 1)
    rows = [torch.empty(0, k, dtype=torch.long, device=unit.device)]
    for start in range(first, last, chunk):
        stop = min(start + chunk, last)
        similarity = coarse[start:stop] @ coarse.T
        own = torch.arange(start, stop, device=unit.device)
        similarity[torch.arange(len(similarity), device=unit.device), own] = -float("inf")
        candidates = similarity.topk(wide, dim=1).indices
        if search_dtype is not None:
            exact = torch.einsum("cd,cwd->cw", unit[start:stop], unit[candidates])
            candidates = candidates.gather(1, exact.topk(k, dim=1).indices)
        rows.append(candidates)
    return torch.cat(rows)


def _search_by_cells(unit: torch.Tensor, k: int, cells: int, probes: int, first: int, last: int, block: int = 1 << 22) -> torch.Tensor:
    """nearest_neighbors of rows first..last of unit rows, searched by inverted lists.

    A spherical k-means on a sample (`cell_centres`) splits the rows into `cells` cells, each row
    a member of the cell of its nearest centre; each query row is compared, exactly, with the
    members of its `probes` nearest cells only. Rows whose probed cells hold fewer than k other
    rows are searched by brute force, so every row gets k neighbours. Deterministic: the sample
    comes from a fixed seed, not the global random state."""
    probes = min(probes, cells)
    centres = cell_centres(unit, cells)
    nearest_cells = torch.cat([(unit[s : s + 8192] @ centres.T).topk(probes, dim=1).indices for s in range(0, len(unit), 8192)])
    home = nearest_cells[:, 0]
    member_order = torch.argsort(home, stable=True)
    member_ends = torch.bincount(home, minlength=cells).cumsum(0).tolist()
    queries = torch.arange(first, last, device=unit.device)
    probed = nearest_cells[first:last].reshape(-1)
    query_order = torch.argsort(probed, stable=True)
    query_ends = torch.bincount(probed, minlength=cells).cumsum(0).tolist()
    query_rows, query_slots = queries.repeat_interleave(probes)[query_order], torch.arange(probes, device=unit.device).repeat(len(queries))[query_order]
    best = torch.full((len(queries), probes * k), -float("inf"), device=unit.device)
    best_index = torch.zeros((len(queries), probes * k), dtype=torch.long, device=unit.device)
    members_start = queries_start = 0
    for cell in range(cells):
        members = member_order[members_start : member_ends[cell]]
        cell_rows, cell_slots = query_rows[queries_start : query_ends[cell]], query_slots[queries_start : query_ends[cell]]
        members_start, queries_start = member_ends[cell], query_ends[cell]
        if len(members) == 0 or len(cell_rows) == 0:
            continue
        width = min(k, len(members))
        columns = torch.arange(width, device=unit.device)
        step = max(1, block // len(members))  # a block of queries x members similarities at a time
        for s in range(0, len(cell_rows), step):
            rows, slots = cell_rows[s : s + step], cell_slots[s : s + step]
            similarity = unit[rows] @ unit[members].T
            similarity[rows[:, None] == members[None, :]] = -float("inf")  # never its own neighbour
            top = similarity.topk(width, dim=1)
            at = (rows - first)[:, None], slots[:, None] * k + columns
            best[at], best_index[at] = top.values, members[top.indices]
    top = best.topk(k, dim=1)
    neighbors = best_index.gather(1, top.indices)
    short = torch.nonzero(top.values[:, -1] == -float("inf")).flatten()
    for start in range(0, len(short), 1024):  # rows whose probed cells held too few: brute force
        rows = short[start : start + 1024]
        similarity = unit[rows + first] @ unit.T
        similarity[torch.arange(len(rows), device=unit.device), rows + first] = -float("inf")
        neighbors[rows] = similarity.topk(k, dim=1).indices
    return neighbors


def cell_centres(unit: torch.Tensor, cells: int, iterations: int = 10, per_cell: int = 40) -> torch.Tensor:
    """cells x D unit centres of a spherical k-means on at most per_cell x cells of the unit rows
    (drawn with a fixed seed); a centre whose cell empties keeps its place."""
    sample = torch.randperm(len(unit), generator=torch.Generator().manual_seed(0))[: per_cell * cells].to(unit.device)
    points = unit[sample]
    centres = points[:cells].clone()
    for _ in range(iterations):
        assign = (points @ centres.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        filled = torch.bincount(assign, minlength=cells) > 0
        centres = torch.where(filled[:, None], F.normalize(sums, dim=1), centres)
    return centres


def coarse_candidates(k: int) -> int:
    """How many rows of the low-precision pass are ranked again exactly, for k neighbours."""
    return 2 * k + 16


def smooth_over_neighbors(features: torch.Tensor, neighbor_index: torch.Tensor, rounds: int) -> torch.Tensor:
    """`rounds` times x_i <- (x_i + mean of x over i's neighbours) / 2, for every row at once
    (a lazy random walk on the kNN graph, which pulls each cluster together).

    The walk matrix is sparse (k entries a row), so a round costs N x k x D, not N^2 x D."""
    n, k = neighbor_index.shape
    walk = sparse.csr_matrix(
        (np.full(n * k, 1.0 / k, dtype=np.float32), neighbor_index.cpu().numpy().ravel(), np.arange(0, n * k + 1, k)), shape=(n, n)
    )
    x = features.detach().float().cpu().numpy()
    for _ in range(rounds):
        x = 0.5 * x + 0.5 * (walk @ x)
    return torch.from_numpy(np.ascontiguousarray(x))


def smoothed_unit_features(features: torch.Tensor, neighbors: int, rounds: int, neighbor_index: torch.Tensor | None = None) -> torch.Tensor:
    """N x D on the CPU: unit features smoothed over their `neighbors` nearest neighbours
    (`neighbor_index`, or mined here on the features' device) `rounds` times, normalised again."""
    if rounds == 0:
        return F.normalize(features.float(), dim=1).cpu()
    if neighbor_index is None:
        neighbor_index = nearest_neighbors(features, neighbors)
    unit = F.normalize(features.float(), dim=1).cpu()
    return F.normalize(smooth_over_neighbors(unit, neighbor_index, rounds), dim=1)

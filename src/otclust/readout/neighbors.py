"""Nearest neighbours in feature space and the smoothing of features over them.

Shared by the read-out (smoothed k-means), CLOT's neighbour views and its size estimate.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse

from otclust.distributed import all_gather_rows, is_distributed, rank, world_size


def nearest_neighbors(features: torch.Tensor, k: int, chunk: int = 1024, search_dtype: torch.dtype | None = None) -> torch.Tensor:
    """N x k indices of each row's k most cosine-similar other rows (itself excluded), nearest first.

    Brute force in row chunks: a chunk x N similarity block at a time (1024 x 70,000 floats is
    290 MB), on the GPU when the features are. With several processes (each holding all the
    features) every process ranks a contiguous share of the rows and the shares are gathered, so
    the work is split instead of repeated.

    `search_dtype` (bfloat16 under --cpu-amp): the block is computed in that dtype, whose
    rounding (about 0.004 near a similarity of 1) blurs the order among close neighbours; the
    coarse_candidates(k) = 2k + 16 best of that pass are then ranked again by exact float32 similarity. A
    neighbour can be missed only for another within that rounding of it. None: exact."""
    unit = F.normalize(features.float(), dim=1)
    k = min(k, len(unit) - 1)
    coarse = unit if search_dtype is None else unit.to(search_dtype)
    wide = k if search_dtype is None else min(coarse_candidates(k), len(unit) - 1)
    share = -(-len(unit) // world_size())
    first = rank() * share if is_distributed() else 0
    last = min(len(unit), first + share)
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
    return all_gather_rows(torch.cat(rows))


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

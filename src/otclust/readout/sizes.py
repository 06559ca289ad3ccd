"""Cluster sizes estimated from features: what CLOT's `--cluster-proportions auto` trains towards."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from otclust.ot.priors import estimate_sizes
from otclust.readout.kmeans import judge_equal_sizes, kmeans_restarts
from otclust.readout.neighbors import smoothed_unit_features


@dataclass
class SizeEstimate:
    """K cluster proportions, largest first; the relative excess cost of equal sizes they were
    judged by (`otclust.readout.kmeans.judge_equal_sizes`; None when not judged, min_excess 0);
    whether equal sizes were kept."""

    sizes: torch.Tensor
    excess: float | None
    kept_equal: bool


def estimate_sizes_from_features(
    features: torch.Tensor,
    n_clusters: int,
    seed: int,
    neighbors: int = 10,
    rounds: int = 5,
    neighbor_index: torch.Tensor | None = None,
    restarts: int = 10,
    floor: float = 0.2,
    min_excess: float = 0.0,
) -> SizeEstimate:
    """Cluster proportions, largest first, of the lowest-inertia k-means (of `restarts`) on the
    unit features smoothed over their neighbours (`neighbor_index`, or mined here), each kept
    above floor/K by `estimate_sizes`, so the OT constraint never lets a cluster die out.

    Equal sizes instead, unless they cost at least `min_excess` more than that k-means
    (relative; `otclust.readout.kmeans.judge_equal_sizes`): a merge-and-split partition of equal classes has the lower
    plain inertia too, and its unequal masses would then teach the network the merge."""
    smoothed = smoothed_unit_features(features, neighbors, rounds, neighbor_index)
    judged = judge_equal_sizes(smoothed, kmeans_restarts(smoothed, n_clusters, seed, restarts), n_clusters, seed, min_excess)
    if judged.equal:
        return SizeEstimate(torch.full((n_clusters,), 1.0 / n_clusters), judged.excess, True)
    mass = torch.from_numpy(np.bincount(judged.end.labels, minlength=n_clusters) / len(judged.end.labels)).float()
    return SizeEstimate(torch.sort(estimate_sizes(mass, floor), descending=True).values, judged.excess, False)


def size_update_epochs(epochs: int, updates: int) -> set[int]:
    """The epochs (0-based) at which sizes are re-estimated: `updates` of them spread evenly over
    training, never the first (the features are untrained there)."""
    return {e for e in (round(i * epochs / (updates + 1)) for i in range(1, updates + 1)) if 1 <= e < epochs}

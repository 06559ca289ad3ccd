"""Cluster sizes estimated from features: what CLOT's `--cluster-proportions auto` trains towards."""

from __future__ import annotations

import numpy as np
import torch

from otclust.ot.priors import estimate_sizes
from otclust.readout.kmeans import kmeans_restarts
from otclust.readout.neighbors import smoothed_unit_features


def estimate_sizes_from_features(
    features: torch.Tensor,
    n_clusters: int,
    seed: int,
    neighbors: int = 10,
    rounds: int = 5,
    neighbor_index: torch.Tensor | None = None,
    restarts: int = 10,
    floor: float = 0.2,
) -> torch.Tensor:
    """Cluster proportions, largest first, of the lowest-inertia k-means (of `restarts`) on the
    unit features smoothed over their neighbours (`neighbor_index`, or mined here), each kept
    above floor/K by `estimate_sizes`, so the OT constraint never lets a cluster die out."""
    smoothed = smoothed_unit_features(features, neighbors, rounds, neighbor_index)
    best = min(kmeans_restarts(smoothed, n_clusters, seed, restarts), key=lambda end: end.inertia)
    mass = torch.from_numpy(np.bincount(best.labels, minlength=n_clusters) / len(best.labels)).float()
    return torch.sort(estimate_sizes(mass, floor), descending=True).values


def size_update_epochs(epochs: int, updates: int) -> set[int]:
    """The epochs (0-based) at which sizes are re-estimated: `updates` of them spread evenly over
    training, never the first (the features are untrained there)."""
    return {e for e in (round(i * epochs / (updates + 1)) for i in range(1, updates + 1)) if 1 <= e < epochs}

"""Optimal-transport solvers and losses used by the clustering methods."""

from otclust.ot.kmeans_loss import ot_kmeans_loss, size_constrained_inertia, size_constrained_kmeans, size_constrained_lower_bound, soft_kmeans_loss, squared_distances
from otclust.ot.partial import PartialResult, sinkhorn_partial, training_rho
from otclust.ot.batched import BatchedSinkhornResult, sinkhorn_batched
from otclust.ot.large import QuantizedScores, SinkhornLabels, quantize_scores, sinkhorn_labels
from otclust.ot.sinkhorn import SinkhornResult, sinkhorn
from otclust.ot.unbalanced import sinkhorn_semi_relaxed

__all__ = [
    "SinkhornResult",
    "sinkhorn",
    "sinkhorn_semi_relaxed",
    "BatchedSinkhornResult",
    "sinkhorn_batched",
    "PartialResult",
    "sinkhorn_partial",
    "training_rho",
    "QuantizedScores",
    "SinkhornLabels",
    "quantize_scores",
    "sinkhorn_labels",
    "ot_kmeans_loss",
    "soft_kmeans_loss",
    "size_constrained_inertia",
    "size_constrained_kmeans",
    "size_constrained_lower_bound",
    "squared_distances",
]

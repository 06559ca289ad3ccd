"""Optimal-transport solvers and losses used by the clustering methods."""

from otclust.ot.kmeans_loss import ot_kmeans_loss, soft_kmeans_loss, squared_distances
from otclust.ot.sinkhorn import SinkhornResult, sinkhorn

__all__ = ["SinkhornResult", "sinkhorn", "ot_kmeans_loss", "soft_kmeans_loss", "squared_distances"]

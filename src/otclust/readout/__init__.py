"""After training: reading clusters off a network's features (the read-out stage), and the
shared pieces it is built from: nearest neighbours and smoothing, the one k-means, size estimates."""

from otclust.readout.kmeans import KMeansRestart, choose_kmeans_restart, kmeans, kmeans_centers, kmeans_from_partition, kmeans_restarts
from otclust.readout.neighbors import nearest_neighbors, smooth_over_neighbors, smoothed_unit_features
from otclust.readout.sizes import estimate_sizes_from_features, size_update_epochs
from otclust.readout.stage import (
    READOUTS,
    SHARED_READOUT,
    FittedReadout,
    ReadoutParams,
    check_readout_name,
    fit_linear_readout,
    fit_method_readout,
    fit_readout,
    install_readout,
    readout_state,
    resolve_readout,
    take_legacy_readout,
)

__all__ = [
    "READOUTS",
    "SHARED_READOUT",
    "FittedReadout",
    "KMeansRestart",
    "ReadoutParams",
    "check_readout_name",
    "choose_kmeans_restart",
    "estimate_sizes_from_features",
    "fit_linear_readout",
    "fit_method_readout",
    "fit_readout",
    "install_readout",
    "kmeans",
    "kmeans_centers",
    "kmeans_from_partition",
    "kmeans_restarts",
    "nearest_neighbors",
    "readout_state",
    "resolve_readout",
    "size_update_epochs",
    "smooth_over_neighbors",
    "smoothed_unit_features",
    "take_legacy_readout",
]

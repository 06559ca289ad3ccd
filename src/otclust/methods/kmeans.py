"""k-means on the inputs themselves: the baseline every table of the papers starts from.

No network is trained (`trainable = False`): the package's one k-means (otclust.readout.kmeans,
scikit-learn's KMeans: k-means++ seeding, `kmeans_restarts` restarts, Lloyd iterations) runs once on the
flattened standardised pixels (or standardised feature vectors) of the training set, and a
sample goes to its nearest center. For images the
standardisation is one affine map of all pixels (channel statistics; per channel for RGB), so
on grayscale data this is exactly k-means on raw pixels; feature vectors are standardised per
dimension.

k-means has no cluster-size constraint: `--cluster-proportions` does not apply (a note says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from otclust.methods.base import ClusteringMethod, Renamed
from otclust.ot.kmeans_loss import squared_distances
from otclust.readout.kmeans import kmeans_centers


@dataclass
class KMeansParams:
    kmeans_restarts: int = 10  # k-means++ restarts; the best inertia is kept
    kmeans_iters: int = 300  # Lloyd iterations per restart (the name DeepCluster's uses too)
    # Former names, read as the new ones with a warning (otclust.methods.base.build_params).
    renamed: ClassVar[dict] = {"n_init": Renamed("kmeans_restarts"), "max_iter": Renamed("kmeans_iters")}


class KMeansBaseline(ClusteringMethod):
    name = "kmeans"
    Params = KMeansParams
    trainable = False
    default_config = {"epochs": 1}
    # The baseline is k-means on pixels itself: its own centres, not a read-out of smoothed pixels.
    default_readout = "head"

    def __init__(self, n_clusters, spec, params: KMeansParams, backbone="auto", augment=None):
        super().__init__(n_clusters, spec, params, backbone, augment)
        dim = spec.feature_dim if spec.is_features else spec.channels * spec.image_size[0] * spec.image_size[1]
        self.register_buffer("centers", torch.zeros(n_clusters, dim))

    def fit_without_training(self, trainer) -> None:
        if self.prior_mode != "uniform":
            trainer.warn("k-means has no cluster-size constraint; --cluster-proportions is not used")
        points = torch.cat([self.flat_inputs(batch) for batch, _ in trainer.iterate_batches(trainer.train_data, 4096, shuffle=False)])
        centers = kmeans_centers(points, self.n_clusters, trainer.config.seed, self.params.kmeans_restarts, self.params.kmeans_iters)
        self.centers.copy_(centers.to(self.centers.device))

    @torch.no_grad()
    def flat_inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw batch -> N x D standardised, flattened inputs."""
        return self.standardize(batch).float().flatten(1)

    def cluster_logits(self, x):
        return -squared_distances(x.float().flatten(1), self.centers)

    def embed(self, x):
        return x.flatten(1)

"""k-means on the inputs themselves: the baseline every table of the papers starts from.

No network is trained (`trainable = False`): scikit-learn's KMeans (k-means++ seeding, n_init
restarts, Lloyd iterations) runs once on the flattened standardised pixels (or standardised
feature vectors) of the training set, and a sample goes to its nearest center. For images the
standardisation is one affine map of all pixels (channel statistics; per channel for RGB), so
on grayscale data this is exactly k-means on raw pixels; feature vectors are standardised per
dimension.

k-means has no cluster-size constraint: `--cluster-proportions` does not apply (a note says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from otclust.methods.base import ClusteringMethod
from otclust.ot.kmeans_loss import squared_distances


def _as_float64_array(points: np.ndarray | torch.Tensor) -> np.ndarray:
    """scikit-learn's KMeans input: a contiguous float64 array, from a tensor or an array."""
    if torch.is_tensor(points):
        points = points.detach().cpu().numpy()
    return np.ascontiguousarray(points, dtype=np.float64)


def kmeans_centers(points: np.ndarray | torch.Tensor, n_clusters: int, seed: int, n_init: int = 10, max_iter: int = 300) -> torch.Tensor:
    """K x D float32 centers of scikit-learn's KMeans on N x D points (threads as torch's)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    points = _as_float64_array(points)
    with threadpool_limits(limits=max(1, torch.get_num_threads())):
        model = KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=seed % 2**32).fit(points)
    return torch.from_numpy(model.cluster_centers_).float()


@dataclass
class KMeansRestart:
    """One k-means++ restart's end point: K x D centers, each point's nearest center, inertia."""

    centers: torch.Tensor
    labels: np.ndarray
    inertia: float


def kmeans_restarts(points: np.ndarray | torch.Tensor, n_clusters: int, seed: int, n_restarts: int, max_iter: int = 300) -> list[KMeansRestart]:
    """Every restart of k-means, not only the lowest-inertia one, so a caller can choose by
    another criterion (CLOT's read-out: the cost under its cluster-size prior)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    points = _as_float64_array(points)
    restart_seeds = np.random.default_rng(seed % 2**32).integers(2**31 - 1, size=n_restarts)
    ends = []
    with threadpool_limits(limits=max(1, torch.get_num_threads())):
        for restart_seed in restart_seeds:
            model = KMeans(n_clusters=n_clusters, n_init=1, max_iter=max_iter, random_state=int(restart_seed)).fit(points)
            ends.append(KMeansRestart(torch.from_numpy(model.cluster_centers_).float(), model.labels_, float(model.inertia_)))
    return ends


@dataclass
class KMeansParams:
    n_init: int = 10  # k-means++ restarts; the best inertia is kept
    max_iter: int = 300  # Lloyd iterations per restart


class KMeansBaseline(ClusteringMethod):
    name = "kmeans"
    Params = KMeansParams
    trainable = False
    default_config = {"epochs": 1}

    def __init__(self, n_clusters, spec, params: KMeansParams, backbone="auto", augment=None):
        super().__init__(n_clusters, spec, params, backbone, augment)
        dim = spec.feature_dim if spec.is_features else spec.channels * spec.image_size[0] * spec.image_size[1]
        self.register_buffer("centers", torch.zeros(n_clusters, dim))

    def fit_without_training(self, trainer) -> None:
        if self.prior_mode != "uniform":
            trainer.log("note: k-means has no cluster-size constraint; --cluster-proportions is not used")
        points = torch.cat([self.flat_inputs(batch) for batch, _ in trainer.iterate_batches(trainer.train_data, 4096, shuffle=False)])
        centers = kmeans_centers(points, self.n_clusters, trainer.config.seed, self.params.n_init, self.params.max_iter)
        self.centers.copy_(centers.to(self.centers.device))

    @torch.no_grad()
    def flat_inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw batch -> N x D standardised, flattened inputs."""
        return self.standardize(batch).float().flatten(1)

    def cluster_logits(self, x):
        return -squared_distances(x.float().flatten(1), self.centers)

    def embed(self, x):
        return x.flatten(1)

"""DeeperCluster: rotation prediction and clustering in one hierarchical loss (Caron et al., ICCV 2019).

Each training image is rotated by 0, 90, 180 or 270 degrees (drawn per sample) and the target is
the pair (rotation, cluster). Predicting the product space directly does not scale, so the
targets form a two-level hierarchy:

* super-classes: the S = 4m products of the rotation with one of m cluster groups (a k-means of
  the whole data into `super_clusters` = m groups); a linear head predicts them;
* sub-classes: within each group, a second k-means splits its samples into k/m sub-clusters
  (k = `kmeans_clusters`); one linear head per super-class predicts them, and only the head of
  the sample's own super-class is trained on it (`losses/hierarchical_cross_entropy.py`).

The loss is the super-class cross-entropy plus the sub-class one. As in DeepCluster, the features
are the backbone's, PCA-whitened and L2-normalised, batches are drawn uniformly over the
(sub-cluster) pseudo-labels, and the prediction heads are re-initialised whenever the clustering
is renewed, `reclusterings` times per run spread over its epochs (at most every epoch; the
reference's is every 3 epochs, a period that would not follow the run's length; the super-class head is
only re-initialised when there are several groups, since with m = 1 its targets are the
rotations, which never change).

Details from the reference code (github.com/facebookresearch/DeeperCluster): its default
`--super_classes 4` means m = 1 (super-classes = rotations only, sub-classes = the k clusters);
super-class index = 4 * group + rotation; 10 k-means iterations. Deviations: the hierarchy is
clustered on features of the unrotated images (the reference's distributed workers each cluster
their share of the data under their own rotation); one random rotation per image and step
instead of one rotation per worker; Adam instead of SGD; PCA to `pca_dim`,
by default DeepCluster's share of the features (a sixteenth; the reference whitens 4096
dimensions of VGG-16, trained on 96 million images, far more than whitening needs here).

The final clustering is read from the cluster part, never from the rotation: the assignment of
the unrotated image's whitened features to the centroids of a K-means of the training features
(k-means++, best of `kmeans_restarts` runs), recomputed after every evaluated epoch (always after
the last) so that it matches the final network. With one group of exactly K sub-clusters that K-means is also the pseudo-labels'.
All k-means here start from k-means++ (the reference's start from random points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from otclust.budget import warn_deprecated
from otclust.errors import UserError
from otclust.losses.hierarchical_cross_entropy import hierarchical_cross_entropy
from otclust.methods.base import Renamed
from otclust.methods.deepcluster import FeatureClusteringMethod, kmeans, uniform_label_order
from otclust.precision import in_float32

ROTATIONS = 4


def rotate_batch(images: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate each square image by rotations[i] * 90 degrees (counter-clockwise)."""
    out = images.clone()
    for r in range(1, ROTATIONS):
        chosen = rotations == r
        if bool(chosen.any()):
            out[chosen] = torch.rot90(images[chosen], r, dims=(2, 3))
    return out


@dataclass
class DeeperClusterParams:
    super_clusters: int = 1  # m cluster groups; super-classes are the 4 rotations x m (reference default m = 1)
    kmeans_clusters: int = 0  # k sub-clusters over all groups, k/m per group; 0: the number of clusters
    rotation: bool = True  # predict rotations (False: super-classes are the m groups alone)
    reassignment: int | None = None  # deprecated: a fixed number of epochs between clusterings; use reclusterings
    pca_dim: int = 0  # dimensions kept by the PCA whitening; 0: a sixteenth of the feature length, as DeepCluster (reference: 4096 on VGG-16)
    kmeans_iters: int = 10  # Lloyd iterations per k-means (reference: 10)
    uniform_sampling: bool = True  # batches drawn uniformly over sub-cluster pseudo-labels
    assign_temperature: float = 0.1  # softmax temperature of -squared distances for predicted probabilities
    kmeans_restarts: int = 10  # k-means++ restarts of the K-means read out as the clustering (best inertia kept)
    reclusterings: int = 100  # clusterings per run, spread over its epochs, at most one per epoch (as DeepCluster's)
    # Former names, read as the new ones with a warning (otclust.methods.base.build_params).
    renamed: ClassVar[dict] = {"readout_inits": Renamed("kmeans_restarts")}


class DeeperCluster(FeatureClusteringMethod):
    name = "deepercluster"
    Params = DeeperClusterParams
    # Reference: SGD lr 0.1, batch 48 per GPU x 64 GPUs, 100 epochs on YFCC100M; here the run's
    # budget (otclust.budget) or configs/.
    default_config = {"batch_size": 64, "lr": 1e-3, "lr_schedule": "constant"}

    def __init__(self, n_clusters, spec, params: DeeperClusterParams, backbone="auto", augment=None):
        super().__init__(n_clusters, spec, params, backbone, augment)
        if params.rotation and (spec.is_features or spec.image_size[0] != spec.image_size[1]):
            raise UserError("deepercluster rotation prediction needs square images: use --param rotation=false for other data")
        m = params.super_clusters
        k = params.kmeans_clusters or n_clusters
        if m < 1 or k < m or k % m:
            raise UserError(f"deepercluster needs super_clusters >= 1 dividing kmeans_clusters, got super_clusters={m}, kmeans_clusters={k}")
        if k < n_clusters or k > spec.n_samples:
            raise UserError(f"deepercluster parameter kmeans_clusters ({k}) must be between the number of clusters ({n_clusters}) and the number of samples")
        if (params.reassignment is not None and params.reassignment < 1) or params.reclusterings < 1:
            raise UserError("deepercluster parameters reassignment and reclusterings must be at least 1")
        warn_deprecated(params, "reassignment", "reclusterings", "deepercluster")
        self.m, self.k, self.k_sub = m, k, k // m
        self.n_rotations = ROTATIONS if params.rotation else 1
        self.n_super = self.n_rotations * m
        self.backbone = self.make_backbone()
        dim = self.backbone.out_dim
        self.super_head = nn.Linear(dim, self.n_super)
        # One linear sub-class head per super-class, stored as one layer: S x k_sub outputs.
        self.sub_heads = nn.Linear(dim, self.n_super * self.k_sub)
        self.init_feature_clustering()
        n = spec.n_samples
        # Pseudo-labels used for training (group, sub-cluster within the group), and the latest clustering.
        self.groups = torch.zeros(n, dtype=torch.long)
        self.subclusters = torch.zeros(n, dtype=torch.long)
        self.latest = (self.groups, self.subclusters)

    @torch.no_grad()
    def hierarchical_kmeans(self, x: torch.Tensor, flat_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Groups (an m-means) and sub-clusters within each group (a k/m-means per group).

        `flat_labels`, a K-means of the same features, is reused as the sub-clusters when the
        hierarchy is that one K-means (one group of exactly K sub-clusters).
        """
        iters = self.params.kmeans_iters
        if self.m == 1:
            groups = torch.zeros(len(x), dtype=torch.long, device=x.device)
            if flat_labels is not None and self.k_sub == self.n_clusters:
                return groups, flat_labels
        else:
            _, groups = kmeans(x, self.m, iters, init="k-means++")
        subclusters = torch.zeros(len(x), dtype=torch.long, device=x.device)
        for group in range(self.m):
            members = torch.nonzero(groups == group).flatten()
            _, labels = kmeans(x[members], min(self.k_sub, len(members)), iters, init="k-means++")
            subclusters[members] = labels
        return groups, subclusters

    @torch.no_grad()
    def recluster(self, trainer) -> None:
        x = self.whitened_training_features(trainer)
        self.latest = self.hierarchical_kmeans(x, self.fit_prediction_centroids(x))
        self.fresh = True

    def recluster_epochs(self, total_epochs: int) -> set[int]:
        if self.params.reassignment is not None:  # the deprecated fixed period
            return set(range(0, total_epochs, self.params.reassignment))
        return super().recluster_epochs(total_epochs)

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if epoch in self.recluster_epochs(trainer.config.epochs):
            if not self.fresh:
                self.recluster(trainer)
            self.groups, self.subclusters = self.latest
            if self.m > 1:
                self.reset_linear(trainer, self.super_head)
            self.reset_linear(trainer, self.sub_heads)
        self.fresh = False

    def on_epoch_end(self, trainer, epoch: int, losses: dict) -> None:
        # Fresh centroids for the evaluation of this epoch and, before a re-clustering epoch, the next labels.
        if self.clusters_after(trainer, epoch):
            self.recluster(trainer)

    def epoch_order(self, trainer, epoch: int):
        if not self.params.uniform_sampling:
            return None
        return uniform_label_order(self.groups.cpu() * self.k_sub + self.subclusters.cpu())

    def training_step(self, batch, indices):
        (view,) = self.views(batch, 1)
        n = view.shape[0]
        if self.groups.device != indices.device:
            self.groups, self.subclusters = self.groups.to(indices.device), self.subclusters.to(indices.device)
        rotations = torch.randint(self.n_rotations, (n,), device=view.device)
        if self.n_rotations > 1:
            view = rotate_batch(view, rotations)
        features = self.backbone(view)
        super_targets = self.groups[indices] * self.n_rotations + rotations
        sub_logits = in_float32(self.sub_heads)(features).view(n, self.n_super, self.k_sub)
        super_loss, sub_loss = hierarchical_cross_entropy(in_float32(self.super_head)(features), sub_logits, super_targets, self.subclusters[indices])
        return {"loss": super_loss + sub_loss, "super": super_loss.detach(), "sub": sub_loss.detach()}

    def may_leave_parameters_unused(self) -> bool:
        return False

    def method_state(self) -> dict:
        return {"groups": self.groups, "subclusters": self.subclusters, "latest": self.latest, "fresh": self.fresh}

"""DeepCluster: k-means on the network's own features as pseudo-labels (Caron et al., ECCV 2018).

Training alternates the paper's two steps, the paper at every epoch, here `reclusterings` times
per run, spread over its epochs (every epoch when the run has fewer), so that the training
between two clusterings follows the run's budget:

1. Clustering (`on_epoch_start` of a re-clustering epoch): backbone features of the whole training set (no augmentation,
   eval mode) are PCA-whitened (`pca_dim` dimensions) and L2-normalised, then k-means gives
   every sample a pseudo-label among `kmeans_clusters` (K, the number of clusters, by default;
   more over-clusters, as the paper's 10,000 on ImageNet). No cluster is left empty (see below).
2. Training: the pseudo-label classifier (a linear layer on the features) is re-initialised
   (weights N(0, 0.01), bias 0) and the network learns the pseudo-labels with cross-entropy on
   one augmented view. Batches are drawn uniformly over pseudo-labels (`epoch_order`: N draws,
   the same number from each non-empty cluster, with replacement in the small ones), the
   paper's guard against a trivial parametrisation.

The clustering is the k-means assignment in the whitened space: `cluster_logits` is the negative
squared distance to K centroids divided by `assign_temperature`. These come from a careful
K-means of the whitened training features (k-means++ seeding, best inertia of `kmeans_restarts`
runs); with `kmeans_clusters` = K the same K-means also gives the pseudo-labels, otherwise the
pseudo-labels come from a separate k-means. To make the read-out agree with the final network,
the clustering is recomputed after every evaluated epoch and before every re-clustering epoch
(`on_epoch_end`), and that result is reused by the next epoch's start (the weights have not
changed in between).

Details from the reference code (github.com/facebookresearch/deepcluster): PCA to 256 dimensions
with whitening then L2 normalisation; 20 k-means iterations; the classifier re-initialised with
N(0, 0.01) weights and given a new optimizer every epoch (here: Adam forgets its moments for it,
see `reset_linear`); uniform sampling over pseudo-labels of N // clusters + 1 samples each,
shuffled and cut to N; a constant learning rate. Faiss, which the reference uses, splits empty
clusters (picking the cluster to split with probability proportional to its size minus one);
`split_empty_clusters` follows that rule for a cluster still empty at the end of k-means.

Deviations: the k-means is the package's one (scikit-learn's, otclust.readout.kmeans), which
while it iterates moves an emptied cluster's centre to the point farthest from its own, not the
paper's split; Adam instead of SGD (lr 0.05, momentum 0.9); k-means++ seeding instead of random
points (the single-start k-means of the reference makes the read-out needlessly noisy); the
features are the backbone output after its final ReLU (the reference clusters AlexNet's fc7
before its ReLU); tiny PCA eigenvalues are floored at 1e-5 of the largest (as DeeperCluster's
PCA) so that dead units cannot blow up in the whitening. `pca_dim` keeps the paper's share of the
features (256 of 4096, a sixteenth: `automatic_pca_dim`) rather than its count: 256 whitened
dimensions of a 256-long feature give the weak directions as much weight as the strong ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from otclust.budget import spread_epochs
from otclust.errors import UserError
from otclust.losses.multi_head_cross_entropy import multi_head_cross_entropy
from otclust.methods.base import ClusteringMethod, Renamed
from otclust.precision import in_float32
from otclust.readout.kmeans import kmeans as shared_kmeans


# ------------------------------------------------------------------------------------------------
# k-means (the package's one, scikit-learn's) and the paper's empty-cluster split
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def split_empty_clusters(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, generator: torch.Generator | None = None, eps: float = 1e-3) -> int:
    """Give every empty cluster half of a non-empty one, in place; returns the number split.

    For an empty cluster i, a cluster j with at least two points is drawn with probability
    proportional to (size_j - 1) (as faiss); its centroid c_j is perturbed by a small random
    vector d: c_i = c_j + d, c_j = c_j - d. The points of j go to whichever of the two is
    nearer (the paper's reassignment), and both centroids become the means of their points. If
    the perturbation leaves one side empty (points all on one side), a random half moves.
    """
    k = centroids.shape[0]
    counts = torch.bincount(labels, minlength=k)
    split = 0
    for i in torch.nonzero(counts == 0).flatten().tolist():
        weights = (counts - 1).clamp(min=0).double()
        if float(weights.sum()) == 0:
            break  # fewer points than clusters: nothing left to split
        j = int(torch.multinomial(weights.cpu(), 1, generator=generator))
        members = torch.nonzero(labels == j).flatten()
        scale = eps * max(float(centroids[j].norm()), 1e-6)
        direction = torch.randn(centroids.shape[1], generator=generator).to(centroids)
        delta = scale * direction / direction.norm().clamp(min=1e-12)
        c_i, c_j = centroids[j] + delta, centroids[j] - delta
        points = x[members]
        to_i = ((points - c_i) ** 2).sum(1) < ((points - c_j) ** 2).sum(1)
        if bool(to_i.all()) or not bool(to_i.any()):
            to_i = torch.zeros(len(members), dtype=torch.bool, device=x.device)
            to_i[torch.randperm(len(members), generator=generator)[: len(members) // 2].to(x.device)] = True
        labels[members[to_i]] = i
        centroids[i] = points[to_i].mean(dim=0)
        centroids[j] = points[~to_i].mean(dim=0)
        counts[i] = int(to_i.sum())
        counts[j] -= counts[i]
        split += 1
    return split


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, n_iters: int = 20, init: torch.Tensor | str = "random", n_init: int = 1, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's one k-means (otclust.readout.kmeans) on the rows of x -> (k x d centroids,
    N labels) on x's device; no cluster is left empty.

    `init`: "random" (k distinct random rows, as DeepCluster's faiss k-means), "k-means++", or a
    k x d tensor of starting centroids; `n_iters` Lloyd iterations at most; with `n_init` > 1 the
    run of lowest inertia is kept. The seed is drawn from torch's generator, so runs repeat under
    the engine's seeding. scikit-learn moves an emptied cluster's centre to a far point while it
    iterates; a cluster still empty at the end (duplicate points) is split off a non-empty one
    (`split_empty_clusters`, the paper's rule).
    """
    n = x.shape[0]
    if k > n:
        raise UserError(f"k-means with {k} clusters needs at least {k} samples, got {n}")
    x = x.float()
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    end = shared_kmeans(x, k, seed, n_init=max(1, n_init), max_iter=n_iters, init=init)
    centroids = end.centers.to(x.device)
    labels = torch.from_numpy(end.labels).long().to(x.device)
    split_empty_clusters(x, labels, centroids, generator)
    return centroids, labels


def uniform_label_order(labels: torch.Tensor, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """N sample indices drawn uniformly over pseudo-labels (DeepCluster's UnifLabelSampler).

    Each non-empty label gets N // L + 1 draws (without replacement when it has more samples,
    with replacement otherwise); the draws are shuffled and cut to N.
    """
    labels = labels.cpu()
    n = len(labels) if n is None else n
    present = torch.unique(labels)
    per_label = n // len(present) + 1
    chosen = []
    for label in present.tolist():
        members = torch.nonzero(labels == label).flatten()
        if len(members) > per_label:
            chosen.append(members[torch.randperm(len(members), generator=generator)[:per_label]])
        else:
            chosen.append(members[torch.randint(len(members), (per_label,), generator=generator)])
    order = torch.cat(chosen)
    return order[torch.randperm(len(order), generator=generator)][:n]


# ------------------------------------------------------------------------------------------------
# Shared by DeepCluster and DeeperCluster: whitened features and the k-means clustering read-out
# ------------------------------------------------------------------------------------------------


def automatic_pca_dim(feature_dim: int) -> int:
    """Whitened dimensions kept when `pca_dim` is 0: a sixteenth of the feature length, the share
    DeepCluster keeps (256 of AlexNet's 4096 fc7 dimensions); 16 for the small CNN and the MLP
    (256 features), 32 for ResNet-18/34 (512). Whitening every direction gives the many weak
    ones as much weight as the few that separate clusters (docs/results.md section 3)."""
    return max(2, feature_dim // 16)


class FeatureClusteringMethod(ClusteringMethod):
    """A method whose clusters are k-means centroids in the PCA-whitened feature space.

    Holds the PCA (mean, components, scales) and the K prediction centroids as buffers, so a
    saved model predicts without refitting; subclasses set `self.backbone` and call
    `init_feature_clustering()`.
    """

    name = "_feature-clustering"

    def init_feature_clustering(self) -> None:
        p = self.params
        if p.pca_dim < 0 or p.kmeans_iters < 1 or p.assign_temperature <= 0:
            raise UserError(
                f"{self.name} parameters: pca_dim must be 0 (automatic) or positive, kmeans_iters at least 1, assign_temperature positive"
            )
        dim = self.backbone.out_dim
        self.pca_components_n = min(p.pca_dim or automatic_pca_dim(dim), dim, self.spec.n_samples)
        self.register_buffer("pca_mean", torch.zeros(dim))
        self.register_buffer("pca_components", torch.eye(self.pca_components_n, dim))
        self.register_buffer("pca_scale", torch.ones(self.pca_components_n))
        self.register_buffer("centroids", torch.zeros(self.n_clusters, self.pca_components_n))
        self.fresh = False  # True when the stored clustering was computed from the current weights

    @torch.no_grad()
    def fit_pca(self, features: torch.Tensor) -> None:
        """PCA with whitening (as scikit-learn's PCA(whiten=True)), from the covariance matrix.

        Eigenvalues below 1e-5 of the largest are floored there (DeeperCluster's PCA), so that
        directions without variance (dead units) are not blown up by the whitening.
        """
        x = features.double()
        mean = x.mean(dim=0)
        centred = x - mean
        covariance = centred.T @ centred / max(len(x) - 1, 1)
        values, vectors = torch.linalg.eigh(covariance)  # ascending
        order = torch.argsort(values, descending=True)[: self.pca_components_n]
        values = values[order].clamp(min=float(values.max()) * 1e-5)
        self.pca_mean.copy_(mean.float())
        self.pca_components.copy_(vectors[:, order].T.float())
        self.pca_scale.copy_(values.rsqrt().float())

    def whiten(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features -> PCA-whitened, L2-normalised rows (the space k-means runs in)."""
        projected = (features.float() - self.pca_mean) @ self.pca_components.T * self.pca_scale
        return F.normalize(projected, dim=1)

    @torch.no_grad()
    def whitened_training_features(self, trainer) -> torch.Tensor:
        features = torch.from_numpy(trainer.embed(trainer.train_data)).to(self.pca_mean.device)
        self.fit_pca(features)
        return self.whiten(features)

    def cluster_logits(self, x):
        z = self.whiten(self.embed(x))
        distances = (z * z).sum(1, keepdim=True) - 2 * z @ self.centroids.T + (self.centroids * self.centroids).sum(1)
        return -distances / self.params.assign_temperature

    @torch.no_grad()
    def fit_prediction_centroids(self, whitened: torch.Tensor) -> torch.Tensor:
        """The read-out: a careful K-means (k-means++, best of `kmeans_restarts` runs) of the whitened
        features; stores its centroids for `cluster_logits` and returns its labels."""
        centroids, labels = kmeans(whitened, self.n_clusters, max(self.params.kmeans_iters, 50), init="k-means++", n_init=self.params.kmeans_restarts)
        self.centroids.copy_(centroids)
        return labels

    def reset_linear(self, trainer, layer: nn.Linear) -> None:
        """Re-initialise a prediction layer as the reference (N(0, 0.01), bias 0) and make the
        optimizer forget its moments: the reference builds a new optimizer for it, and Adam's
        old moments would push the fresh layer towards the previous, permuted, pseudo-labels."""
        with torch.no_grad():
            layer.weight.normal_(0, 0.01)
            layer.bias.zero_()
        self.forget_optimizer_state(trainer, list(layer.parameters()))

    # The engine does not hand methods its optimizer; `trainer.optimizer` is used when present,
    # else the optimizer is recognised at its first step by a one-shot step pre-hook.
    def forget_optimizer_state(self, trainer, params: list[nn.Parameter]) -> None:
        optimizer = getattr(trainer, "optimizer", None)
        if optimizer is None and getattr(self, "_optimizer", None) is not None:
            optimizer = self._optimizer()
        if optimizer is not None:
            for param in params:
                optimizer.state.pop(param, None)
            return
        self._pending_reset = list(getattr(self, "_pending_reset", [])) + params
        self._watch_for_optimizer()

    def _watch_for_optimizer(self) -> None:
        if getattr(self, "_optimizer_hook", None) is not None:
            return
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        method_ref = weakref.ref(self)

        def capture(optimizer, args, kwargs):
            method = method_ref()
            if method is None:
                handle.remove()
                return
            owned = {id(p) for p in method.parameters()}
            if not any(id(p) in owned for group in optimizer.param_groups for p in group["params"]):
                return
            method._optimizer = weakref.ref(optimizer)
            for param in getattr(method, "_pending_reset", []):
                optimizer.state.pop(param, None)
            method._pending_reset = []
            method._optimizer_hook = None
            handle.remove()

        handle = register_optimizer_step_pre_hook(capture)
        self._optimizer_hook = handle

    def on_fit_start(self, trainer) -> None:
        # A new fit (or a resume) has a new optimizer: recognise it afresh.
        self._optimizer = None

    def recluster_epochs(self, total_epochs: int) -> set[int]:
        """Epochs (0-based) that start with new pseudo-labels and fresh prediction layers:
        `reclusterings` of them spread over the run, the first at epoch 0."""
        return set(spread_epochs(self.params.reclusterings, total_epochs))

    def clusters_after(self, trainer, epoch: int) -> bool:
        """Whether to cluster after this epoch: for the next epoch's labels, or for fresh
        prediction centroids where the engine evaluates (always after the last epoch)."""
        config = trainer.config
        evaluated = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs
        return evaluated or epoch + 1 in self.recluster_epochs(config.epochs)

    def __getstate__(self):
        # The optimizer link is a weak reference and a hook handle: neither pickles nor copies.
        state = dict(super().__getstate__())
        for key in ("_optimizer", "_optimizer_hook", "_pending_reset"):
            state.pop(key, None)
        return state


# ------------------------------------------------------------------------------------------------
# DeepCluster
# ------------------------------------------------------------------------------------------------


@dataclass
class DeepClusterParams:
    kmeans_clusters: int = 0  # k of the pseudo-label k-means; 0: the number of clusters (paper: 10000 on ImageNet)
    pca_dim: int = 0  # dimensions kept by the PCA whitening; 0: a sixteenth of the feature length (the paper's 256 of 4096)
    kmeans_iters: int = 20  # Lloyd iterations per clustering (reference: 20)
    uniform_sampling: bool = True  # batches drawn uniformly over pseudo-labels (paper); False: plain shuffle
    assign_temperature: float = 0.1  # softmax temperature of -squared distances for predicted probabilities
    kmeans_restarts: int = 10  # k-means++ restarts of the K-means read out as the clustering (best inertia kept)
    # Re-clusterings per run, spread evenly over its epochs, at most one per epoch (the paper's: every
    # epoch). A count per run, so the steps a fresh classifier gets between two clusterings grow
    # with the run's budget instead of being one epoch of whatever size the data set has.
    reclusterings: int = 100
    # Former names, read as the new ones with a warning (otclust.methods.base.build_params).
    renamed: ClassVar[dict] = {"readout_inits": Renamed("kmeans_restarts")}


class DeepCluster(FeatureClusteringMethod):
    name = "deepcluster"
    Params = DeepClusterParams
    # Paper: SGD lr 0.05, batch 256, 500 epochs (ImageNet); here the run's budget (otclust.budget)
    # or configs/.
    default_config = {"batch_size": 64, "lr": 1e-3, "lr_schedule": "constant"}

    def __init__(self, n_clusters, spec, params: DeepClusterParams, backbone="auto", augment=None):
        super().__init__(n_clusters, spec, params, backbone, augment)
        k = params.kmeans_clusters or n_clusters
        if k < n_clusters:
            raise UserError(f"deepcluster parameter kmeans_clusters ({k}) must be 0 or at least the number of clusters ({n_clusters})")
        if k > spec.n_samples:
            raise UserError(f"deepcluster parameter kmeans_clusters ({k}) is more than the {spec.n_samples} samples")
        if params.reclusterings < 1:
            raise UserError(f"deepcluster parameter reclusterings must be at least 1, got {params.reclusterings}")
        self.k = k
        self.backbone = self.make_backbone()
        self.classifier = nn.Linear(self.backbone.out_dim, k)
        self.init_feature_clustering()
        self.pseudo_labels = torch.zeros(spec.n_samples, dtype=torch.long)  # used for training
        self.latest_labels = self.pseudo_labels  # from the last clustering

    @torch.no_grad()
    def recluster(self, trainer) -> None:
        x = self.whitened_training_features(trainer)
        labels = self.fit_prediction_centroids(x)
        if self.k != self.n_clusters:
            _, labels = kmeans(x, self.k, self.params.kmeans_iters, init="k-means++")
        self.latest_labels = labels
        self.fresh = True

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if epoch in self.recluster_epochs(trainer.config.epochs):
            if not self.fresh:
                self.recluster(trainer)
            self.pseudo_labels = self.latest_labels
            self.reset_linear(trainer, self.classifier)
        self.fresh = False

    def on_epoch_end(self, trainer, epoch: int, losses: dict) -> None:
        if self.clusters_after(trainer, epoch):
            self.recluster(trainer)

    def epoch_order(self, trainer, epoch: int):
        if not self.params.uniform_sampling:
            return None
        return uniform_label_order(self.pseudo_labels)

    def training_step(self, batch, indices):
        (view,) = self.views(batch, 1)
        logits = in_float32(self.classifier)(self.backbone(view))
        if self.pseudo_labels.device != indices.device:
            self.pseudo_labels = self.pseudo_labels.to(indices.device)
        return {"loss": multi_head_cross_entropy(logits, self.pseudo_labels[indices])}

    def may_leave_parameters_unused(self) -> bool:
        return False

    def method_state(self) -> dict:
        return {"pseudo_labels": self.pseudo_labels, "latest_labels": self.latest_labels, "fresh": self.fresh}

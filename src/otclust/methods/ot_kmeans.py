"""Autoencoder clustering of Genevay, Dulac-Arnold & Vert, "Differentiable Deep Clustering with
Cluster Size Constraints" (2019): OT k-means and its two baselines.

All three train an autoencoder (encoder f, decoder g) on the standardised inputs, without
augmentation (the paper uses none), and cluster the embeddings f(x) in R^10:

* ``ot-kmeans`` (the paper's method, Algorithm 2): loss ``l_r + lambda * OT_eps(f(batch), mu, w)``,
  the entropic transport (eps: ``sinkhorn_eps``) between the batch (mass 1/m per sample) and
  learned centers mu (parameters) with cluster proportions w, solved by Sinkhorn (`otclust.ot.ot_kmeans_loss`,
  envelope-theorem gradient). w is the run's cluster-size prior (``--cluster-proportions``,
  uniform by default) through `target_marginal`. The centers are initialised by k-means on the
  embeddings after the optional pre-training (the first ``pretrain_fraction`` of the run's epochs,
  reconstruction only).
* ``soft-kmeans`` (DKM of Fard et al., the paper's Proposition 2): the same with only the sample
  marginal, i.e. softmin assignments softmax(-C/eps) and no constraint on cluster sizes
  (`otclust.ot.soft_kmeans_loss`).
* ``ae-kmeans`` (the paper's "AE + k-means" baseline): reconstruction only, then k-means on the
  embeddings (run after every evaluated epoch, so each history row is AE + k-means at that point).

A sample's cluster is ``argmin_k ||f(x) - mu_k||^2``; `cluster_logits` returns
``-||f(x) - mu_k||^2 / eps`` (eps = ``sinkhorn_eps``, 1 for ae-kmeans), whose softmax is the soft assignment.

Choices where the paper is silent or our engine differs (we found no public code of the paper):

* Reconstruction loss: the paper's Eq. 2 per sample, ``||x - g(f(x))||^2`` summed over the
  input's values, on the *standardised* inputs, averaged over the batch (i.e. D times the mean
  squared error, D = 64 on digits, 784 on MNIST). ``l_c`` is the transport cost with plan mass 1,
  i.e. a per-sample mean too, and Eq. 11 adds the two with lambda = 1 (``cluster_weight``). With
  the per-value mean instead, lambda = 1 lets the clustering term swamp the reconstruction from a
  random start on digits (the embedding collapses onto the centers: ACC 0.30 after 20 epochs).
* Architecture: "fc" is the paper's MNIST autoencoder d-500-250-10-250-500-d with ReLU (linear
  embedding and output layers). "conv" is its CIFAR-10 encoder (convolutions 32-64-128, kernels
  5-5-3, stride 2, ReLU; batch norm added as in `SmallCNN`, whose layers it reuses) then a linear
  layer to R^10, with the mirrored transposed-convolution decoder (the paper does not describe
  its decoder).
* Optimisation: batch 300, Adam at lr 1e-3 as the paper; its "step decay" is not specified, so
  the engine's cosine schedule replaces it; no weight decay. ``center_lr_scale`` (default 1, the
  paper) gives mu a larger step than the network: Adam moves a parameter by about lr per step
  whatever its gradient, so on a small data set (digits: 6 steps an epoch, MNIST 233) the centers
  hardly leave their k-means initialisation.
* Centers are initialised by k-means++ with 10 restarts (scikit-learn) on the whole training set's
  embeddings; the paper says only "k-means". Its Algorithm 2 runs that k-means before the
  pre-training loop; we run it after pre-training, where the embeddings it clusters are trained.
* Sinkhorn stops at a relative marginal error of 1e-3 (``sinkhorn_tol``) or 1000 iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from otclust.budget import fraction_of_epochs, warn_deprecated
from otclust.errors import UserError
from otclust.methods.base import ClusteringMethod, Renamed
from otclust.methods.kmeans import kmeans_centers
from otclust.models.backbones import SmallCNN
from otclust.ot import ot_kmeans_loss, soft_kmeans_loss
from otclust.ot.kmeans_loss import squared_distances


class FullyConnectedAutoencoder(nn.Module):
    """d-500-250-e-250-500-d with ReLU between layers (the DEC/DKM/Genevay MNIST autoencoder)."""

    def __init__(self, in_dim: int, embedding_dim: int = 10, hidden: tuple[int, ...] = (500, 250)):
        super().__init__()

        def stack(sizes: list[int]) -> nn.Sequential:
            layers: list[nn.Module] = []
            for index, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                layers.append(nn.Linear(a, b))
                if index < len(sizes) - 2:
                    layers.append(nn.ReLU(inplace=True))
            return nn.Sequential(*layers)

        self.encoder = stack([in_dim, *hidden, embedding_dim])
        self.decoder = stack([embedding_dim, *reversed(hidden), in_dim])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, z: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return self.decoder(z).view(shape)


class ConvAutoencoder(nn.Module):
    """Conv 32-64-128 (kernels 5-5-3, stride 2) -> linear to R^e, and the mirrored decoder."""

    def __init__(self, channels: int, image_size: tuple[int, int], embedding_dim: int = 10):
        super().__init__()
        self.conv = SmallCNN(channels, image_size).conv  # the paper's three convolutions (+ BN)
        sizes = [tuple(image_size)]
        x = torch.zeros(2, channels, *image_size)
        with torch.no_grad():
            for layer in self.conv:
                x = layer(x)
                if isinstance(layer, nn.Conv2d):
                    sizes.append(tuple(x.shape[2:]))
        self.sizes = sizes  # spatial size before each convolution and after the last
        self.latent_shape = tuple(x.shape[1:])
        flat = x[0].numel()
        self.to_embedding = nn.Linear(flat, embedding_dim)
        self.from_embedding = nn.Sequential(nn.Linear(embedding_dim, flat), nn.ReLU(inplace=True))
        depths = [conv.out_channels for conv in self.conv if isinstance(conv, nn.Conv2d)]
        kernels = [conv.kernel_size[0] for conv in self.conv if isinstance(conv, nn.Conv2d)]
        ins = depths[::-1]
        outs = [*depths[::-1][1:], channels]
        ks = kernels[::-1]
        self.deconvs = nn.ModuleList([nn.ConvTranspose2d(i, o, k, stride=2, padding=k // 2) for i, o, k in zip(ins, outs, ks)])
        self.deconv_norms = nn.ModuleList([nn.BatchNorm2d(o) for o in outs[:-1]])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_embedding(self.conv(x).flatten(1))

    def decode(self, z: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        x = self.from_embedding(z).view(-1, *self.latent_shape)
        targets = self.sizes[::-1][1:]
        for index, deconv in enumerate(self.deconvs):
            x = deconv(x, output_size=targets[index])
            if index < len(self.deconv_norms):
                x = torch.relu(self.deconv_norms[index](x))
        return x


@dataclass
class AeKMeansParams:
    autoencoder: str = "auto"  # fc | conv | auto (fc for feature vectors and grayscale <= 28 px, else conv)
    embedding_dim: int = 10  # dimension of the embedding f(x) (paper: 10)
    kmeans_restarts: int = 10  # k-means++ restarts of the k-means on the embeddings
    # The batch shrinks on a small set so that an epoch holds at least this many steps (1: never).
    # The paper's batch of 300 was set for 70,000 images; on 300 it makes one step an epoch, and
    # the budget (the same samples seen at any batch) then gives the autoencoder a few hundred
    # steps in all. Not the default: at 4, the rule for adopting it failed on ae-kmeans
    # (docs/ablations.md, "Autoencoder family on few images").
    min_steps_per_epoch: int = 1
    # Share of the standardised input values zeroed (inverted dropout) before the encoder, while the
    # decoder still reconstructs the clean input: a denoising autoencoder, as DEC/IDEC pre-train
    # theirs (20 %). 0: the paper's plain autoencoder.
    input_dropout: float = 0.0


@dataclass
class SoftKMeansParams(AeKMeansParams):
    # Entropic eps of the transport between batch and centers, in squared embedding distances
    # (paper: 1e-2): ot-kmeans's Sinkhorn; soft-kmeans keeps only the sample marginal, whose plan
    # is the closed-form softmin softmax(-C / eps) (Sinkhorn's first row step).
    sinkhorn_eps: float = 1e-2
    # Weight of the clustering loss beside the representation loss: lambda in l_r + lambda * l_c,
    # l_c beside the reconstruction loss l_r (paper's Eq. 11: 1).
    cluster_weight: float = 1.0
    # Share of the run's epochs (rounded) with the reconstruction loss only, then k-means on the
    # embeddings initialises mu (0: none, the paper's OT k-means; DKM pre-trains): a share, so the
    # warm-up follows the run's budget.
    pretrain_fraction: float = 0.0
    pretrain_epochs: int | None = None  # deprecated: a fixed number of pre-training epochs; use pretrain_fraction
    # Learning rate of the centers mu relative to the network's (paper: 1, one Adam step for all).
    # Adam moves mu by about lr per step whatever the embedding's scale, so on a small data set
    # (few steps) the centers barely move and stay at their k-means initialisation.
    center_lr_scale: float = 1.0
    # Reported clustering loss: False, the transport cost sum pi*C; True, the regularized value
    # (+ eps * sum pi (log pi - 1)). For ot-kmeans the gradient is the same either way; for
    # soft-kmeans False is DKM's objective (gradient through the softmin too) and True the
    # envelope gradient of Proposition 2's regularized value.
    entropy: bool = False
    # Former names, read as the new ones with a warning (otclust.methods.base.build_params).
    renamed: ClassVar[dict] = {"eps": Renamed("sinkhorn_eps")}


@dataclass
class OtKMeansParams(SoftKMeansParams):
    sinkhorn_iters: int = 1000  # cap on Sinkhorn iterations per batch
    # Relative marginal error at which Sinkhorn stops. At sinkhorn_eps = 1e-2 on embeddings whose
    # squared distances are O(1-10), 1e-4 takes over 1000 iterations per batch; 1e-3 makes the plan
    # (the envelope gradient) accurate to 0.1 % of each cluster's mass, far below SGD's own noise.
    sinkhorn_tol: float = 1e-3


class AutoencoderClustering(ClusteringMethod):
    """Shared by ot-kmeans, soft-kmeans and ae-kmeans: the autoencoder, centers, k-means and hooks."""

    name = "autoencoder-clustering"
    Params = AeKMeansParams
    # Paper: batch 300, Adam lr 1e-3 with step decay (cosine here), 200 epochs, no weight decay; the
    # length here is the run's budget (otclust.budget) or configs/.
    default_config = {"batch_size": 300, "lr": 1e-3, "weight_decay": 0.0, "lr_schedule": "cosine"}

    @classmethod
    def training_batch_size(cls, params: dict, n_samples: int, batch_size: int) -> int:
        steps = params.get("min_steps_per_epoch", cls.Params.min_steps_per_epoch)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            return batch_size  # refused with a clear message when the method is built
        largest = n_samples // steps
        return batch_size if largest >= min(batch_size, n_samples) else max(2, largest)

    def __init__(self, n_clusters, spec, params, backbone="auto", augment=None):
        super().__init__(n_clusters, spec, params, backbone, augment)
        if params.min_steps_per_epoch < 1:
            raise UserError(f"{self.name} parameter min_steps_per_epoch must be at least 1, got {params.min_steps_per_epoch}")
        if not 0 <= params.input_dropout < 1:
            raise UserError(f"{self.name} parameter input_dropout must be in [0, 1), got {params.input_dropout}")
        kind = self._autoencoder_kind(params.autoencoder, backbone)
        dim = params.embedding_dim
        if kind == "fc":
            in_dim = spec.feature_dim if spec.is_features else spec.channels * spec.image_size[0] * spec.image_size[1]
            self.autoencoder = FullyConnectedAutoencoder(in_dim, dim)
        else:
            self.autoencoder = ConvAutoencoder(spec.channels, tuple(spec.image_size), dim)
        self.autoencoder_kind = kind
        self.init_centers(torch.randn(n_clusters, dim) * 0.1)
        # Whether mu holds the k-means initialisation (after pre-training) or later values.
        self.register_buffer("centers_initialized", torch.tensor(False))
        self.current_epoch = 0

    def _autoencoder_kind(self, kind: str, backbone: str) -> str:
        if kind == "auto":
            if backbone in ("mlp", "small-cnn"):
                kind = "fc" if backbone == "mlp" else "conv"
            elif backbone != "auto":
                raise UserError(f"{self.name} trains its own autoencoder: choose it with --param autoencoder=fc|conv, not --backbone {backbone}")
            elif self.spec.is_features or (self.spec.channels == 1 and max(self.spec.image_size) <= 28):
                kind = "fc"
            else:
                kind = "conv"
        if kind not in ("fc", "conv"):
            raise UserError(f"{self.name} parameter autoencoder must be fc, conv or auto, got '{kind}'")
        if kind == "conv" and self.spec.is_features:
            raise UserError(f"{self.name}: the conv autoencoder needs images, but the data are feature vectors: use autoencoder=fc")
        return kind

    # --- the centers ------------------------------------------------------------------------
    def init_centers(self, centers: torch.Tensor) -> None:
        """mu as a buffer (set by k-means only); methods that learn mu override this."""
        self.register_buffer("centers", centers)

    @torch.no_grad()
    def set_centers(self, centers: torch.Tensor) -> None:
        self.centers.copy_(centers.to(self.centers.device))

    # --- the model ------------------------------------------------------------------------
    def embed(self, x):
        return self.autoencoder.encode(x)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's training input: x with input_dropout of its values zeroed (identity at 0)."""
        rate = self.params.input_dropout
        return F.dropout(x, rate, training=True) if rate > 0 else x

    def reconstruction_loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The paper's Eq. 2 per sample: ||x - g(f(x))||^2 on standardised inputs, batch mean.

        That is the mean squared error times the input dimension D (64 on digits, 784 on MNIST).
        """
        error = (self.autoencoder.decode(z, x.shape).float() - x.float()).flatten(1)
        return error.pow(2).sum(dim=1).mean()

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        return squared_distances(z.float(), self.centers.float())

    def logit_eps(self) -> float:
        return float(getattr(self.params, "sinkhorn_eps", 1.0))

    def cluster_logits(self, x):
        return -self.distances(self.embed(x)) / self.logit_eps()

    # --- k-means on the embeddings -----------------------------------------------------------
    @torch.no_grad()
    def fit_centers(self, trainer) -> None:
        """k-means on the whole training set's embeddings (eval mode) -> mu."""
        embeddings = trainer.embed(trainer.train_data)
        self.set_centers(kmeans_centers(embeddings, self.n_clusters, trainer.config.seed, n_init=self.params.kmeans_restarts))

    @staticmethod
    def evaluated_after(trainer, epoch: int) -> bool:
        config = trainer.config
        return (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs

    def on_fit_start(self, trainer) -> None:
        if self.prior_mode != "uniform" and not isinstance(self, OtKMeans):
            trainer.warn(f"{self.name} has no cluster-size constraint; --cluster-proportions is not used")

    def training_step(self, batch, indices):
        raise NotImplementedError


class AeKMeans(AutoencoderClustering):
    """The paper's 'AE + k-means' baseline: reconstruction only, k-means on the embeddings."""

    name = "ae-kmeans"
    Params = AeKMeansParams

    def may_leave_parameters_unused(self) -> bool:
        return False  # the autoencoder is all there is to train (mu is a buffer)

    def training_step(self, batch, indices):
        x = self.standardize(batch)
        recon = self.reconstruction_loss(x, self.embed(self.corrupt(x)))
        return {"loss": recon, "reconstruction": recon.detach()}

    def on_epoch_end(self, trainer, epoch, losses):
        # k-means wherever the engine will evaluate (always after the last epoch), so every
        # history row and the final prediction are AE + k-means at that point of training.
        if self.evaluated_after(trainer, epoch):
            self.fit_centers(trainer)
            self.centers_initialized.fill_(True)


class SoftKMeans(AutoencoderClustering):
    """DKM (Fard et al.): l_r + lambda * soft k-means, the one-marginal case of OT k-means."""

    name = "soft-kmeans"
    Params = SoftKMeansParams

    def init_centers(self, centers: torch.Tensor) -> None:
        # mu = center_lr_scale * center_param: Adam moves center_param by about lr per step, so
        # mu moves about center_lr_scale * lr per step (a learning rate of its own for mu).
        for key in ("center_lr_scale", "sinkhorn_eps"):
            if not getattr(self.params, key) > 0:
                raise UserError(f"{self.name} parameter {key} must be positive, got {getattr(self.params, key)}")
        self.center_param = nn.Parameter(centers / self.params.center_lr_scale)

    @property
    def centers(self) -> torch.Tensor:
        return self.center_param * self.params.center_lr_scale

    @torch.no_grad()
    def set_centers(self, centers: torch.Tensor) -> None:
        self.center_param.copy_(centers.to(self.center_param.device) / self.params.center_lr_scale)

    def __init__(self, n_clusters, spec, params, backbone="auto", augment=None):
        super().__init__(n_clusters, spec, params, backbone, augment)
        if not 0 <= params.pretrain_fraction < 1:
            raise UserError(f"{self.name} parameter pretrain_fraction must be in [0, 1), got {params.pretrain_fraction}")
        warn_deprecated(params, "pretrain_epochs", "pretrain_fraction", self.name)
        # Pre-training epochs: the deprecated fixed count, else set from the run's length at fit start.
        self.pretrain_epochs = params.pretrain_epochs or 0

    def may_leave_parameters_unused(self) -> bool:
        p = self.params  # mu gets no gradient while pre-training
        return p.pretrain_epochs > 0 if p.pretrain_epochs is not None else p.pretrain_fraction > 0

    def on_fit_start(self, trainer) -> None:
        super().on_fit_start(trainer)
        epochs = trainer.config.epochs
        if self.params.pretrain_epochs is None:
            self.pretrain_epochs = min(fraction_of_epochs(self.params.pretrain_fraction, epochs), epochs - 1)
        if self.pretrain_epochs >= epochs:
            raise UserError(f"{self.name}: pretrain_epochs ({self.pretrain_epochs}) must be fewer than the epochs ({epochs})")

    def on_epoch_start(self, trainer, epoch):
        self.current_epoch = epoch
        if epoch >= self.pretrain_epochs and not bool(self.centers_initialized):
            self.fit_centers(trainer)  # Algorithm 2, line 4 (after pre-training, if any)
            self.centers_initialized.fill_(True)

    def on_epoch_end(self, trainer, epoch, losses):
        # During pre-training mu is not trained: k-means on the current embeddings makes the
        # evaluated rows meaningful (AE + k-means), and the last one initialises mu.
        pretraining = epoch < self.pretrain_epochs
        if pretraining and (self.evaluated_after(trainer, epoch) or epoch + 1 == self.pretrain_epochs):
            self.fit_centers(trainer)
            self.centers_initialized.fill_(epoch + 1 == self.pretrain_epochs)

    def clustering_loss(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return soft_kmeans_loss(z.float(), self.centers.float(), self.params.sinkhorn_eps, entropy=self.params.entropy)

    def training_step(self, batch, indices):
        x = self.standardize(batch)
        z = self.embed(x)
        # With input_dropout the decoder learns from a corrupted view, while the centers are fitted
        # to the clean embeddings that the read-out and prediction see (DEC/IDEC corrupt only the
        # autoencoder's input, never what is clustered).
        recon = self.reconstruction_loss(x, self.embed(self.corrupt(x)) if self.params.input_dropout > 0 else z)
        if self.current_epoch < self.pretrain_epochs:
            return {"loss": recon, "reconstruction": recon.detach()}
        cluster, plan = self.clustering_loss(z)
        loss = recon + self.params.cluster_weight * cluster
        return {"loss": loss, "reconstruction": recon.detach(), "cluster": cluster.detach()}


class OtKMeans(SoftKMeans):
    """The paper's method: l_r + lambda * OT_eps with cluster proportions w."""

    name = "ot-kmeans"
    Params = OtKMeansParams

    def clustering_loss(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        z, centers = z.float(), self.centers.float()
        with torch.no_grad():
            probs = torch.softmax(-squared_distances(z, centers) / p.sinkhorn_eps, dim=1)
        weights = self.target_marginal(probs)
        return ot_kmeans_loss(z, centers, p.sinkhorn_eps, weights=weights, n_iters=p.sinkhorn_iters, tol=p.sinkhorn_tol, entropy=p.entropy)

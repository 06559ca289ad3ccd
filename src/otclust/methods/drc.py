"""DRC: Deep Robust Clustering by Contrastive Learning (Zhong, Chen, Jin & Hua, 2020).

A backbone and a linear cluster head map each image to K logits, the *assignment features* z,
whose softmax are the *assignment probabilities* p. Two augmented views of every sample of the
batch pass through the network, and the loss (Eq. 10 of the paper) is

    L = L_AF(z, z') + L_AP(p, p') + lambda * L_CR(p)

* L_AF, InfoNCE over the samples on the assignment features (T = 0.5): a sample's two views get
  similar logits, not just the same argmax, which tightens the clusters (intra-class variance);
* L_AP, InfoNCE over the K cluster columns of the probabilities (T = 0.95): cluster k of one view
  holds the same samples as cluster k of the other and differs from the other clusters;
* L_CR = 1/N sum_k (sum_i p_ik)^2 with lambda = 0.005 against putting most samples in a few
  clusters.

The losses are in `otclust.losses.drc`. DRC solves no transport problem: it has no hard
cluster-size constraint, so `--cluster-proportions` does not apply (a note says so).

Where the paper is vague, and what we chose:

* Similarities are cosine (L2-normalised rows / columns), not the literal dot product of Eq. 4
  and 7; see `otclust.losses.drc` for why (the temperatures only make sense for cosine, and the
  public code of the same lineage, DCDC/PICA, normalises). ``normalize=false`` gives the literal
  form.
* Auxiliary over-clustering head: "the same ... as PICA". PICA's public code (and DCDC's) adds a
  second head with 70 clusters on every data set, trained with the same loss; its prediction is
  never used. PICA trains the heads in alternate epochs; here both heads' losses are summed at
  every step (same objective, one forward per batch). ``overcluster=0`` removes it.
* Views: the paper (as PICA) contrasts each image with 2 augmentations of it ("repeated each
  in-batch sample 2 times") against the lightly transformed original. We use two augmented views
  of each sample, as SimCLR and the other contrastive methods of this package; the losses are the
  paper's one-directional forms (view a is the anchor), and L_CR is taken on view a, as Eq. 9
  takes it on the original images.
* Network: the paper uses PICA's ResNet-34 variant with Sobel input; we use the package's
  backbone (`--backbone`; the small CNN on a CPU), with the cluster head directly on its features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from otclust.errors import UserError
from otclust.losses.drc import assignment_feature_loss, assignment_probability_loss, cluster_regularization
from otclust.methods.base import ClusteringMethod
from otclust.precision import in_float32


@dataclass
class DrcParams:
    af_temperature: float = 0.5  # T of the assignment feature loss (paper: 0.5)
    ap_temperature: float = 0.95  # T of the assignment probability loss (paper: 0.95)
    cr_weight: float = 0.005  # lambda of the cluster regularization (paper: 0.005 on all data sets)
    af_weight: float = 1.0  # weight of L_AF (paper: 1)
    ap_weight: float = 1.0  # weight of L_AP (paper: 1)
    normalize: bool = True  # cosine similarities (true) or the literal dot products of Eq. 4 and 7
    overcluster: int = 70  # clusters of the auxiliary over-clustering head (PICA/DRC: 70); 0 = none
    overcluster_weight: float = 1.0  # weight of the auxiliary head's loss


class Drc(ClusteringMethod):
    name = "drc"
    Params = DrcParams
    # Paper: Adam, lr 1e-4, batch 256, 500 epochs, no weight decay and a fixed learning rate (as
    # PICA's code). 500 epochs are a GPU budget: by default the run's budget (otclust.budget), which
    # grows with the data; the per-data-set configs pick CPU-sized runs.
    default_config = {"batch_size": 256, "lr": 1e-4, "weight_decay": 0.0, "lr_schedule": "constant"}

    def __init__(self, n_clusters, spec, params: DrcParams, backbone="auto", augment=None):
        super().__init__(n_clusters, spec, params, backbone, augment)
        if params.overcluster < 0:
            raise UserError(f"drc parameter overcluster must be 0 (none) or a number of clusters, got {params.overcluster}")
        self.backbone = self.make_backbone()
        dim = self.backbone.out_dim
        self.cluster_head = nn.Linear(dim, n_clusters)
        self.overcluster_head = nn.Linear(dim, params.overcluster) if params.overcluster > 0 else None

    def may_leave_parameters_unused(self) -> bool:
        return False  # every step uses the backbone and both heads

    def on_fit_start(self, trainer) -> None:
        if self.prior_mode != "uniform":
            trainer.warn("drc has no cluster-size constraint; --cluster-proportions is not used")

    def head_losses(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_AF, L_AP and L_CR of one head from the two views' logits (assignment features)."""
        p = self.params
        logits_a, logits_b = logits_a.float(), logits_b.float()
        probs_a, probs_b = torch.softmax(logits_a, dim=1), torch.softmax(logits_b, dim=1)
        af = assignment_feature_loss(logits_a, logits_b, p.af_temperature, p.normalize)
        ap = assignment_probability_loss(probs_a, probs_b, p.ap_temperature, p.normalize)
        cr = cluster_regularization(probs_a)
        total = p.af_weight * af + p.ap_weight * ap + p.cr_weight * cr
        return {"total": total, "af": af, "ap": ap, "cr": cr}

    def training_step(self, batch, indices):
        view_a, view_b = self.views(batch, 2)
        features = self.backbone(torch.cat([view_a, view_b]))
        main = self.head_losses(*in_float32(self.cluster_head)(features).chunk(2))
        loss = main["total"]
        parts = {"af": main["af"].detach(), "ap": main["ap"].detach(), "cr": main["cr"].detach()}
        if self.overcluster_head is not None:
            over = self.head_losses(*in_float32(self.overcluster_head)(features).chunk(2))
            loss = loss + self.params.overcluster_weight * over["total"]
            parts["overcluster"] = over["total"].detach()
        return {"loss": loss, **parts}

    def cluster_logits(self, x):
        return self.cluster_head(self.backbone(x))

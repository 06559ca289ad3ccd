"""SeLa: self-labelling via simultaneous clustering and representation learning (Asano et al., ICLR 2020).

The network (backbone + linear heads) is trained with plain cross-entropy on hard pseudo-labels
of one augmented view. The labels are not predicted per batch: a set number of times per run
(`label_updates`, spread evenly over the epochs, the first before any training) the whole
training set is scored and, for every head, the labels are the argmax of the entropic OT plan

    Q = diag(u) P^lambda diag(v),  rows summing to 1/N, columns to the cluster prior b,

i.e. ``otclust.ot.sinkhorn(log P, eps=1/lambda, b)``. The equipartition constraint (b uniform
by default, `--cluster-proportions` otherwise) is what rules out the collapse to one cluster.
Several heads (`n_heads`) each get their own labels; their cross-entropies are averaged.

Where the paper is terse we follow the authors' code (github.com/yukimasano/self-label):
labels start as a random balanced assignment, the first re-labelling runs before the first
step, all heads are re-labelled at each update (as `main.py`), and Sinkhorn runs until the
marginals are met (`sinkhorn_tol`). Deviations: the reference spaces the updates by steps
(quadratically in `main.py`, linearly in `cifar.py`); here they happen at epoch starts,
evenly spaced, since that is where the engine gives whole-data hooks. The probabilities P are
computed on unaugmented images in eval mode (the reference passes its training loader, with
augmentation, while noting a less augmented loader works too). SGD with step decay is replaced
by the engine's Adam + cosine schedule.

The whole-data pass never holds more than one chunk of images in the network: P is built
chunk by chunk (`label_batch_size`) and only the N x K log-probabilities of the heads are kept,
so N may be far larger than a batch.

Prediction uses the head with the lowest running training loss (as CLOT; no labels are used),
which is head 0 when there is a single head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from otclust.distributed import all_reduce_mean
from otclust.errors import UserError
from otclust.losses.multi_head_cross_entropy import per_head_cross_entropy
from otclust.methods.base import ClusteringMethod
from otclust.models import ClusterHead
from otclust.ot import sinkhorn


@dataclass
class SelaParams:
    lam: float = 25.0  # lambda of P^lambda (the Sinkhorn eps is 1/lambda); paper/ImageNet 25, CIFAR code 10
    label_updates: int = 100  # whole-data re-labellings per run, spread over the epochs (at most one per epoch)
    n_heads: int = 1  # clustering heads, each with its own labels; the lowest-loss head predicts
    sinkhorn_iters: int = 1000  # cap on Sinkhorn iterations per re-labelling
    sinkhorn_tol: float = 1e-2  # relative error on the cluster marginals at which Sinkhorn stops (hard labels need no more)
    label_batch_size: int = 1024  # images per forward pass when scoring the whole training set


class Sela(ClusteringMethod):
    name = "sela"
    Params = SelaParams
    # Paper: SGD lr 0.05, 400 epochs (ImageNet) / 800 (CIFAR), batch 256; see configs/ for ours.
    default_config = {"epochs": 30, "batch_size": 256, "lr": 1e-3}

    def __init__(self, n_clusters, spec, params: SelaParams, backbone="auto", augment=None):
        super().__init__(n_clusters, spec, params, backbone, augment)
        if params.lam <= 0:
            raise UserError(f"sela parameter lam must be positive, got {params.lam}")
        if params.n_heads < 1 or params.label_updates < 1 or params.label_batch_size < 1:
            raise UserError("sela parameters n_heads, label_updates and label_batch_size must be at least 1")
        self.backbone = self.make_backbone()
        self.cluster_head = ClusterHead(self.backbone.out_dim, n_clusters, n_heads=params.n_heads)
        # Running training loss of each head: prediction uses the best one, without labels.
        self.register_buffer("head_loss", torch.zeros(params.n_heads))
        # Each head's running cluster masses (the base keeps one such vector for its prior).
        self.register_buffer("head_mass", torch.full((params.n_heads, n_clusters), 1.0 / n_clusters))
        # Labels: n_heads x N, a random balanced assignment until the first update (as the reference).
        n = spec.n_samples
        self.labels = torch.stack([(torch.arange(n) % n_clusters)[torch.randperm(n)] for _ in range(params.n_heads)])
        self.label_epochs_done: list[int] = []

    # --- whole-data labelling -------------------------------------------------------------
    def update_epochs(self, total_epochs: int) -> list[int]:
        """Epochs at whose start the labels are recomputed: `label_updates` of them, evenly spaced."""
        count = min(self.params.label_updates, total_epochs)
        return sorted({(j * total_epochs) // count for j in range(count)})

    @torch.no_grad()
    def head_log_probs(self, data: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """n_heads x N x K log-probabilities of raw data, computed chunk by chunk in eval mode."""
        batch_size = batch_size or self.params.label_batch_size
        was_training = self.training
        self.eval()
        chunks = []
        for start in range(0, len(data), batch_size):
            features = self.backbone(self.standardize(data[start : start + batch_size]))
            chunks.append(torch.stack([torch.log_softmax(logits.float(), dim=1) for logits in self.cluster_head(features)]))
        self.train(was_training)
        return torch.cat(chunks, dim=1)

    @torch.no_grad()
    def solve_labels(self, log_p: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Hard labels of one head: argmax_k of the Sinkhorn plan diag(u) P^lambda diag(v)."""
        p = self.params
        # target_marginal keeps a running mass; give it this head's own history.
        self.predicted_mass.copy_(self.head_mass[head])
        sizes = self.target_marginal(log_p.exp())
        self.head_mass[head].copy_(self.predicted_mass)
        plan = sinkhorn(log_p, eps=1.0 / p.lam, b=sizes, n_iters=p.sinkhorn_iters, tol=p.sinkhorn_tol).plan
        return plan.argmax(dim=1)

    @torch.no_grad()
    def update_labels(self, data: torch.Tensor) -> None:
        log_p = self.head_log_probs(data)
        self.labels = torch.stack([self.solve_labels(log_p[h], h) for h in range(len(log_p))])
        self.predicted_mass.copy_(self.head_mass[self.best_head()])

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if epoch in self.update_epochs(trainer.config.epochs) and epoch not in self.label_epochs_done:
            self.update_labels(trainer.train_data)
            self.label_epochs_done.append(epoch)

    # --- training -------------------------------------------------------------------------
    def training_step(self, batch, indices):
        (view,) = self.views(batch, 1)
        logits = self.cluster_head(self.backbone(view))
        if self.labels.device != indices.device:
            self.labels = self.labels.to(indices.device)
        head_losses = per_head_cross_entropy(logits, self.labels[:, indices])
        with torch.no_grad():
            batch_losses = all_reduce_mean(head_losses.detach())  # the global batch's, with several processes
            first = bool((self.head_loss == 0).all())
            self.head_loss.copy_(batch_losses if first else 0.9 * self.head_loss + 0.1 * batch_losses)
        return {"loss": head_losses.mean()}

    def best_head(self) -> int:
        return int(torch.argmin(self.head_loss)) if len(self.head_loss) > 1 else 0

    def cluster_logits(self, x):
        return self.cluster_head(self.backbone(x))[self.best_head()]

    def may_leave_parameters_unused(self) -> bool:
        return False

    def method_state(self) -> dict:
        return {"labels": self.labels, "label_epochs_done": list(self.label_epochs_done)}

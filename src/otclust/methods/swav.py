"""SwAV: swapping assignments between views (Caron et al., NeurIPS 2020).

Every view of a batch goes through the backbone and a projection MLP, and is L2-normalised to
z. Trainable prototypes C (one per cluster, also on the unit sphere) give scores z^T C. For each
of the two large views, codes Q are the entropic OT plan between the batch and the prototypes,

    Q = diag(u) exp(z^T C / eps) diag(v),  eps = 0.05 (`sinkhorn_eps`), 3 Sinkhorn iterations,

with columns following the cluster prior (equal sizes by default) and rows rescaled to sum to 1.
The network then predicts each large view's code from every other view (swapped prediction),
with a softmax at temperature 0.1 over the prototype scores (`losses/swapped_prediction.py`).

Details from the reference code (github.com/facebookresearch/swav, main_swav.py), which the
paper leaves implicit: each Sinkhorn iteration normalises the prototypes' (column) sums first,
then the samples' (the codes equal the reference's, see `codes`); the prototypes are
re-normalised before every step; their gradient is dropped at the start of training (the
reference: its first epoch; here the first `freeze_prototypes_fraction` of the run's steps, so
that the frozen phase follows the run's length); codes are only computed for the two large
crops and every other crop (large or small) predicts them, averaged over the V - 1 predicting
views and the 2 assigned ones; with `queue_length` > 0 the projections of the last
steps' large crops are kept in a queue (after the first `queue_start_fraction` of the
epochs) and scored with the
current prototypes, so that Sinkhorn sees queue + batch rows once the queue is full, and only
the batch's rows are used as codes. Multi-crop: `n_small_crops` extra low-resolution views of
a small part of the image (scale `small_crop_scale`, side `small_crop_size`), as the paper's
6 x 96px next to 2 x 224px. Prototype sets beyond the K clusters (`extra_prototypes`, sizes of
additional sets, as DeepCluster-v2/SwAV's multi-prototype heads) add the same loss on their own
scores; their codes use equal cluster sizes.

Deviations: Adam + cosine schedule instead of LARS (lr 4.8, batch 4096); a smaller projection
MLP; K prototypes (the number of clusters) instead of 3000 so that the clustering can be read
from them: a sample's cluster is the argmax of its prototype scores. Backbones whose input
size is fixed (the small CNN and the MLP) get the small crops upsampled back to the full size
(low-resolution local views at the same cost as a large one); the ResNets take them at their
small size, as the paper does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from otclust.budget import fraction_of_epochs, fraction_of_steps, warn_deprecated
from otclust.data.augment import BatchAugmenter
from otclust.distributed import all_gather_rows, is_distributed, world_size
from otclust.errors import UserError
from otclust.losses.swapped_prediction import swapped_prediction_loss
from otclust.methods.base import ClusteringMethod, Renamed
from otclust.models import ProjectionHead, ResNetCifar
from otclust.precision import in_float32


@in_float32
def prototype_scores(z_views: list[torch.Tensor], weight: torch.Tensor) -> list[torch.Tensor]:
    """Each view's scores against the prototypes (rows of `weight`), in float32 under autocast."""
    return [z @ weight.T for z in z_views]


@dataclass
class SwavParams:
    sinkhorn_eps: float = 0.05  # entropic eps of the codes' Sinkhorn on the prototype scores z^T C (paper: 0.05)
    sinkhorn_iters: int = 3  # Sinkhorn iterations per code computation
    temperature: float = 0.1  # softmax temperature of the swapped prediction
    projection_dim: int = 128  # dimension of z (the unit sphere the prototypes live on)
    hidden_dim: int = 512  # hidden width of the projection MLP (paper: 2048)
    extra_prototypes: list = field(default_factory=list)  # sizes of extra prototype sets, e.g. [30, 100]
    queue_length: int = 0  # projections kept from earlier batches for Sinkhorn (0: no queue)
    # The queue starts after this share of the run's epochs: earlier the features change too fast for
    # stored ones to be comparable (the reference starts it at epoch 15 of 200-800).
    queue_start_fraction: float = 0.05
    # The prototypes do not move during this share of the run's optimizer steps, so they are not
    # fitted to the random network's features (the reference freezes them for its first epoch,
    # 313 steps of ImageNet at batch 4096; a fixed count would be most of a small run).
    freeze_prototypes_fraction: float = 0.05
    queue_start_epoch: int | None = None  # deprecated: a fixed first epoch; use queue_start_fraction
    freeze_prototypes_iters: int | None = None  # deprecated: a fixed step count; use freeze_prototypes_fraction
    n_small_crops: int = 0  # extra low-resolution views of small parts of the image (multi-crop)
    small_crop_size: int = 0  # side of the small crops in pixels; 0: 96/224 of the image side
    small_crop_scale: list = field(default_factory=lambda: [0.05, 0.14])  # area fraction of a small crop
    # Former names, read as the new ones with a warning (otclust.methods.base.build_params).
    renamed: ClassVar[dict] = {"epsilon": Renamed("sinkhorn_eps")}


class Swav(ClusteringMethod):
    name = "swav"
    Params = SwavParams
    # Paper: 400-800 epochs at batch 4096 (LARS); here the run's budget (otclust.budget) or configs/.
    default_config = {"batch_size": 256, "lr": 1e-3}

    def __init__(self, n_clusters, spec, params: SwavParams, backbone="auto", augment=None):
        super().__init__(n_clusters, spec, params, backbone, augment)
        if params.sinkhorn_eps <= 0 or params.temperature <= 0 or params.sinkhorn_iters < 1:
            raise UserError("swav parameters sinkhorn_eps and temperature must be positive and sinkhorn_iters at least 1")
        extra = [int(k) for k in (params.extra_prototypes or [])]
        if any(k < 2 for k in extra):
            raise UserError(f"swav parameter extra_prototypes must list sizes of at least 2, got {params.extra_prototypes}")
        if params.n_small_crops < 0 or params.queue_length < 0:
            raise UserError("swav parameters n_small_crops and queue_length must not be negative")
        if params.n_small_crops and spec.is_features:
            raise UserError("swav multi-crop (n_small_crops) needs images, not feature vectors")
        if not (0 <= params.freeze_prototypes_fraction < 1 and 0 <= params.queue_start_fraction < 1):
            raise UserError("swav parameters freeze_prototypes_fraction and queue_start_fraction must be in [0, 1)")
        warn_deprecated(params, "freeze_prototypes_iters", "freeze_prototypes_fraction", "swav")
        warn_deprecated(params, "queue_start_epoch", "queue_start_fraction", "swav")
        self.backbone = self.make_backbone()
        self.projection_head = ProjectionHead(self.backbone.out_dim, hidden_dim=params.hidden_dim, out_dim=params.projection_dim)
        self.prototypes = nn.ModuleList([nn.Linear(params.projection_dim, k, bias=False) for k in [n_clusters, *extra]])
        with torch.no_grad():
            for layer in self.prototypes:
                layer.weight.copy_(F.normalize(layer.weight, dim=1))
        if params.n_small_crops:
            height, width = spec.image_size
            side = params.small_crop_size or max(2, round(min(height, width) * 96 / 224))
            self.small_size = (min(side, height), min(side, width))
            scale = tuple(float(s) for s in params.small_crop_scale)
            small_config = dataclasses.replace(self.augmenter.config, crop_scale=scale)
            self.small_augmenter = BatchAugmenter(small_config, self.augmenter.normalizer)
            # Backbones with a fixed input size see the small crops upsampled to the full size.
            self.small_upsample = not isinstance(self.backbone, ResNetCifar)
        self.iteration = 0  # optimizer steps taken: freezes the prototypes at the start
        # Steps with frozen prototypes: fixed by the deprecated count, else set from the run's length.
        self.freeze_steps = params.freeze_prototypes_iters or 0
        self.epoch = 0
        self.queue: torch.Tensor | None = None  # 2 x queue_length x projection_dim
        self.queue_filled = 0

    # --- views and projections ---------------------------------------------------------------
    def small_views(self, batch: torch.Tensor) -> list[torch.Tensor]:
        views = []
        for _ in range(self.params.n_small_crops):
            view = self.small_augmenter(batch, output_size=self.small_size)
            if self.small_upsample:
                view = F.interpolate(view, size=tuple(self.spec.image_size), mode="bilinear", align_corners=False)
            views.append(view)
        return views

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection_head(self.backbone(x)).float(), dim=1)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        for layer in self.prototypes:
            layer.weight.copy_(F.normalize(layer.weight, dim=1))

    # --- codes --------------------------------------------------------------------------------
    @torch.no_grad()
    @in_float32
    def codes(self, scores: torch.Tensor, weight: torch.Tensor, view: int, main_set: bool) -> torch.Tensor:
        """Sinkhorn codes (rows summing to 1) for one view's B x K prototype scores."""
        p = self.params
        scores = scores.detach()
        n = scores.shape[0]
        if self.queue is not None and self.queue_filled >= self.queue.shape[1]:
            scores = torch.cat([self.queue[view] @ weight.detach().T, scores])
        k = scores.shape[1]
        if main_set:
            sizes = self.target_marginal(torch.softmax(scores / p.temperature, dim=1))
        else:
            sizes = torch.full((k,), 1.0 / k, device=scores.device)
        # SwAV's iterations start with the prototype (column) normalisation of exp(scores/eps);
        # the solver starts with a row update, so that first column update is passed as its
        # warm start and the solver does the remaining iterations: exactly the reference's
        # sequence (with few iterations the order matters: starting with the rows balances
        # far less in 3 iterations).
        # With several processes the problem is the global batch's (SwAV's distributed Sinkhorn):
        # the column sums, and so this first column update, run over every process's rows.
        distributed = is_distributed()
        column_mass = torch.logsumexp(scores.double() / p.sinkhorn_eps, dim=0)
        if distributed:
            column_mass = torch.logsumexp(all_gather_rows(column_mass[None]), dim=0)
        first_column = torch.log(sizes.double()) - column_mass
        plan = self.solve_transport(scores, eps=p.sinkhorn_eps, b=sizes, n_iters=p.sinkhorn_iters - 1, warm_start=first_column, distributed=distributed).plan
        rows = plan.shape[0] * (world_size() if distributed else 1)
        return plan[-n:] * rows

    @torch.no_grad()
    def push_to_queue(self, projections: list[torch.Tensor]) -> None:
        length = self.queue.shape[1]
        for view, z in enumerate(projections):
            self.queue[view] = torch.cat([z.detach().float(), self.queue[view]])[:length]
        self.queue_filled = min(length, self.queue_filled + projections[0].shape[0])

    def on_fit_start(self, trainer) -> None:
        if self.params.freeze_prototypes_iters is None:
            self.freeze_steps = fraction_of_steps(self.params.freeze_prototypes_fraction, trainer.total_steps)

    def queue_start(self, total_epochs: int) -> int:
        """First epoch (0-based) that fills the queue."""
        if self.params.queue_start_epoch is not None:
            return self.params.queue_start_epoch
        return fraction_of_epochs(self.params.queue_start_fraction, total_epochs)

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self.epoch = epoch
        p = self.params
        if p.queue_length > 0 and epoch >= self.queue_start(trainer.config.epochs) and self.queue is None:
            self.queue = torch.zeros(2, p.queue_length, p.projection_dim, device=trainer.train_data.device)
            self.queue_filled = 0
        elif self.queue is not None:
            self.queue = self.queue.to(trainer.train_data.device)

    # --- training -----------------------------------------------------------------------------
    def training_step(self, batch, indices):
        p = self.params
        self.normalize_prototypes()
        n = batch.shape[0]
        large = self.project(torch.cat(self.views(batch, 2)))
        z_views = list(large.split(n))
        if p.n_small_crops:
            z_views += list(self.project(torch.cat(self.small_views(batch))).split(n))
        frozen = self.iteration < self.freeze_steps
        losses = []
        for index, layer in enumerate(self.prototypes):
            weight = layer.weight.detach() if frozen else layer.weight
            scores = prototype_scores(z_views, weight)
            codes = [self.codes(scores[view], weight, view, main_set=index == 0) for view in range(2)]
            losses.append(swapped_prediction_loss(scores, codes, p.temperature))
        if self.queue is not None:
            self.push_to_queue(z_views[:2])
        self.iteration += 1
        loss = torch.stack(losses).mean()
        parts = {"loss": loss}
        if len(losses) > 1:
            parts["clusters"] = losses[0].detach()
        return parts

    def cluster_logits(self, x):
        z = self.project(x)
        return z @ F.normalize(self.prototypes[0].weight.float(), dim=1).T / self.params.temperature

    def may_leave_parameters_unused(self) -> bool:
        p = self.params  # frozen prototypes get no gradient
        return p.freeze_prototypes_iters > 0 if p.freeze_prototypes_iters is not None else p.freeze_prototypes_fraction > 0

    def method_state(self) -> dict:
        return {"iteration": self.iteration, "epoch": self.epoch, "queue": self.queue, "queue_filled": self.queue_filled}

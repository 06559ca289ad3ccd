"""CLOT: contrastive learning-driven and optimal-transport-based clustering (Aburidi & Marcia).

Each batch, two augmented views a and b pass through one backbone. The cluster head gives
probabilities P_a, P_b; the pseudo-labels Q = diag(u) P^lambda diag(v) (lambda = 1/`sinkhorn_eps`) are the entropic OT plan
between the batch and the clusters (rows 1/N, columns the cluster-size prior), which rules out
putting everything in one cluster. The network learns each view's Q from the other view's
prediction (transformation invariance), and a SimCLR projection head adds NT-Xent on z_a, z_b.

After training, clusters are read off by the read-out stage (otclust.readout): by default
k-means on neighbour-smoothed backbone features and a linear read-out (`--readout smoothed`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from otclust.budget import epochs_of, warn_deprecated
from otclust.checkpoint import upgrade_clot_state
from otclust.distributed import all_reduce_mean, is_distributed, world_size
from otclust.errors import UserError
from otclust.losses import nt_xent_loss, soft_cross_entropy
from otclust.losses.selflabel import selflabel_loss
from otclust.methods.base import ClusteringMethod, Renamed, reciprocal
from otclust.models import ClusterHead, CosineClusterHead, ProjectionHead
from otclust.models.teacher import ClusterPredictor, ema_teacher
from otclust.ot.priors import match_prior_to_mass
from otclust.readout import estimate_sizes_from_features, nearest_neighbors, size_update_epochs
from otclust.readout.neighbors import MINING_CELLS_FROM, NEIGHBOR_SEARCHES, search_cells
from otclust.readout.stage import LegacyReadoutParams


@dataclass
class ClotParams(LegacyReadoutParams):
    # Entropic eps of the pseudo-labels' Sinkhorn on log-probabilities. The paper parametrises it by
    # lambda of P^lambda, eps = 1/lambda: lambda 5 is sinkhorn_eps 0.2 (docs/ablations.md).
    sinkhorn_eps: float = 0.2
    sinkhorn_iters: int = 200  # a cap: Sinkhorn stops earlier once the marginals are met
    sinkhorn_tol: float = 1e-2  # relative marginal error at which Sinkhorn stops
    # Test that error every this many iterations only: fewer operations, and on a GPU fewer waits
    # for the device; each plan still meets the tolerance (otclust.ot.batched). Measured: docs/performance.md.
    sinkhorn_check_every: int = 1
    temperature: float = 0.5  # NT-Xent tau
    gather_negatives: bool = True  # several processes: NT-Xent negatives from the whole global batch
    # Weight of the clustering loss beside the representation loss: here the OT cluster loss beside
    # NT-Xent. Full weight since 2026-12-05, chosen on the development sets by a rule written down
    # first (docs/results.md 3.1). The digits and Fashion-MNIST recipes keep the 0.3 they were tuned
    # with (at full weight their early, shorter schedules locked some seeds into merges).
    cluster_weight: float = 1.0
    cluster_start_fraction: float = 0.0  # share of the run before the OT cluster loss starts (only NT-Xent trains)
    contrastive_weight: float = 1.0
    projection_dim: int = 128
    n_heads: int = 1  # several heads; the one with the lowest loss is the 'head' predictor (no labels used)
    head: str = "linear"  # linear | cosine (L2-normalised features and prototypes)
    head_temperature: float = 0.1  # logit scale 1/T of the cosine head
    overcluster_factor: int = 0  # >1 adds an auxiliary head with factor*K clusters (PICA/DRC style)
    selflabel_fraction: float = 0.0  # last share of the run spent on SCAN-style self-labelling of confident samples
    selflabel_threshold: float = 0.99  # confidence above which a sample's argmax becomes its label
    teacher_momentum: float = 0.0  # >0: pseudo-labels come from an EMA copy of backbone + heads (e.g. 0.99)
    neighbors: int = 0  # >0: the second view is of one of each sample's k nearest neighbours (SCAN/NNCLR)
    # Shares of the run (rounded to whole epochs, at least one): from the first neighbour views on
    # (mined from the backbone just before), the neighbours are mined again every such share.
    neighbor_start_fraction: float = 0.05
    neighbor_every_fraction: float = 0.05
    # backbone: neighbours in the backbone's feature space, mined as above; input: neighbours of
    # the input feature vectors (a frozen pretrained backbone's cached kNN graph), found once.
    neighbor_source: str = "backbone"
    # How the backbone's neighbours are searched: exact (brute force; bfloat16 then re-ranked under
    # --cpu-amp), cells (inverted lists, about 99.7 % of the exact neighbours, otclust.readout.neighbors)
    # or auto: cells from MINING_CELLS_FROM rows on. The same rows serve auto_sizes=features'
    # estimate made when mining; the read-out's own search is not affected.
    neighbor_search: str = "auto"
    # Where 'auto' takes its cluster sizes from. "features": the sorted cluster masses of k-means on
    # the neighbour-smoothed features (otclust.readout.estimate_sizes_from_features, smoothed as the
    # read-out's settings say), size_updates times over training or whenever neighbours are mined,
    # matched to the clusters by predicted mass. "predictions": the running predicted masses.
    auto_sizes: str = "features"
    size_updates: int = 9
    # Deprecated: fixed epoch counts whatever the run's length (otclust.budget.warn_deprecated).
    cluster_start: int | None = None
    selflabel_epochs: int | None = None
    neighbor_start: int | None = None
    neighbor_every: int | None = None
    # Former names, read as the new ones with a warning (otclust.methods.base.build_params).
    renamed: ClassVar[dict] = {"lam": Renamed("sinkhorn_eps", reciprocal, "sinkhorn_eps = 1/lam")}


class Clot(ClusteringMethod):
    name = "clot"
    Params = ClotParams

    def __init__(self, n_clusters, spec, params: ClotParams, backbone="auto", augment=None):
        super().__init__(n_clusters, spec, params, backbone, augment)
        p = params
        for ok, message in (
            (p.sinkhorn_eps > 0, f"sinkhorn_eps must be positive, got {p.sinkhorn_eps}"),
            (isinstance(p.sinkhorn_check_every, int) and p.sinkhorn_check_every >= 1, f"sinkhorn_check_every must be a whole number >= 1, got {p.sinkhorn_check_every!r}"),
            (p.head in ("linear", "cosine"), f"head must be 'linear' or 'cosine', got {p.head!r}"),
            (p.auto_sizes in ("predictions", "features") and p.size_updates >= 0, f"auto_sizes must be 'predictions' or 'features' and size_updates >= 0, got {p.auto_sizes!r} and {p.size_updates}"),
            (p.neighbors >= 0, f"neighbors must be >= 0, got {p.neighbors}"),
            (all(0 <= f < 1 for f in (p.cluster_start_fraction, p.selflabel_fraction, p.neighbor_start_fraction)) and 0 < p.neighbor_every_fraction <= 1,
             "cluster_start_fraction, selflabel_fraction and neighbor_start_fraction must be in [0, 1), neighbor_every_fraction in (0, 1]"),
            (p.neighbor_every is None or p.neighbor_every >= 1, f"neighbor_every must be >= 1, got {p.neighbor_every}"),
            (0 <= p.teacher_momentum < 1, f"teacher_momentum must be in [0, 1), got {p.teacher_momentum}"),
            (p.neighbor_source in ("backbone", "input"), f"neighbor_source must be 'backbone' or 'input', got {p.neighbor_source!r}"),
            (p.neighbor_search in NEIGHBOR_SEARCHES, f"neighbor_search must be one of {', '.join(NEIGHBOR_SEARCHES)}, got {p.neighbor_search!r}"),
            (p.neighbor_source == "backbone" or p.neighbors == 0 or spec.is_features, "neighbor_source=input needs feature vectors (features:X.npy or a pretrained --backbone)"),
        ):
            if not ok:
                raise UserError(f"clot parameter {message}")
        self.backbone = self.make_backbone()
        dim = self.backbone.out_dim
        linear = p.head == "linear"
        self.cluster_head = ClusterHead(dim, n_clusters, n_heads=p.n_heads) if linear else CosineClusterHead(dim, n_clusters, p.n_heads, p.head_temperature)
        self.projection_head = ProjectionHead(dim, out_dim=p.projection_dim)
        self.overcluster_head = ClusterHead(dim, p.overcluster_factor * n_clusters) if p.overcluster_factor > 1 else None
        # Each head's running loss (the lowest predicts) and running cluster masses: heads number
        # their clusters independently, so a size prior is matched to each head's own masses.
        self.register_buffer("head_loss", torch.zeros(p.n_heads))
        self.register_buffer("head_mass", torch.full((p.n_heads, n_clusters), 1.0 / n_clusters))
        self.selflabelling = False
        self.clustering = not (p.cluster_start or p.cluster_start_fraction)
        for old in ("cluster_start", "selflabel_epochs", "neighbor_start", "neighbor_every"):
            warn_deprecated(p, old, old.replace("_epochs", "") + "_fraction", "clot")
        # Rows of the training set's k nearest neighbours in backbone feature space (N x k), once mined.
        self.neighbor_index: torch.Tensor | None = None
        self.neighbor_images: torch.Tensor | None = None  # the training set the rows point into
        # auto_sizes=features: the latest k-means estimate of the cluster sizes (all zero: none yet).
        self.register_buffer("feature_sizes", torch.zeros(n_clusters))
        self.teacher = ema_teacher(self.backbone, self.cluster_head, p.teacher_momentum) if p.teacher_momentum > 0 else None

    @classmethod
    def short_budget(cls, params, features):
        """Neighbour views from a fixed graph of frozen features (the pretrained stage's setting)."""
        return features and params.get("neighbor_source") == "input" and bool(params.get("neighbors"))

    def on_fit_start(self, trainer):
        self.neighbor_images = trainer.train_data
        if self.neighbor_index is not None:  # resumed from a checkpoint
            self.neighbor_index = self.neighbor_index.to(trainer.train_data.device)
        elif self.params.neighbors > 0 and self.params.neighbor_source == "input":
            given = trainer.input_neighbors
            if given is None or given.shape[1] < min(self.params.neighbors, len(trainer.train_data) - 1):
                given = nearest_neighbors(trainer.train_data, self.params.neighbors)
            self.neighbor_index = given[:, : self.params.neighbors].to(trainer.train_data.device)

    def on_epoch_start(self, trainer, epoch):
        p, total = self.params, trainer.config.epochs
        self.selflabelling = epoch >= total - epochs_of(p.selflabel_fraction, total, fixed=p.selflabel_epochs)
        self.clustering = epoch >= epochs_of(p.cluster_start_fraction, total, fixed=p.cluster_start)
        start, every = (epochs_of(share, total, fixed, least=1) for share, fixed in ((p.neighbor_start_fraction, p.neighbor_start), (p.neighbor_every_fraction, p.neighbor_every)))
        mining = p.neighbors > 0 and p.neighbor_source == "backbone" and epoch >= start and ((epoch - start) % every == 0 or self.neighbor_index is None)
        # auto_sizes=features re-estimates when neighbours are mined (one embedding, one kNN
        # search for both), else size_updates times over training.
        estimating = self.prior_mode == "auto" and p.auto_sizes == "features"
        estimating = estimating and (mining if p.neighbors > 0 and p.neighbor_source == "backbone" else epoch in size_update_epochs(trainer.config.epochs, p.size_updates))
        if not (mining or estimating):
            return
        smoothing = trainer.readout_params  # auto sizes come from features smoothed as the read-out's
        features = torch.from_numpy(trainer.embed(trainer.train_data)).to(trainer.train_data.device)
        rows = None
        if mining:  # top-k comes sorted, so the first k columns of a wider search are the k nearest
            cells = search_cells(len(features), p.neighbor_search, MINING_CELLS_FROM)
            rows = nearest_neighbors(features, max(p.neighbors, smoothing.neighbors) if estimating else p.neighbors, search_dtype=trainer.precision.search_dtype, cells=cells)
            self.neighbor_index = rows[:, : p.neighbors]
        if estimating:
            index = rows[:, : smoothing.neighbors] if rows is not None else None
            estimate = estimate_sizes_from_features(
                features, self.n_clusters, trainer.config.seed + epoch, smoothing.neighbors, smoothing.rounds, neighbor_index=index, min_excess=smoothing.auto_min_excess
            )
            self.feature_sizes.copy_(estimate.sizes.to(self.feature_sizes.device))
            sizes = estimate.sizes
            verdict = f"below {smoothing.auto_min_excess:.0%}: equal sizes kept" if estimate.kept_equal else f"largest {sizes[0]:.3f}, smallest {sizes[-1]:.3f}"
            judged = "" if estimate.excess is None else f"equal sizes would cost {estimate.excess:.0%} more than free k-means; "
            trainer.log(f"epoch {epoch + 1}: cluster sizes estimated ({judged}{verdict})")

    @torch.no_grad()
    def estimated_sizes(self):
        """auto_sizes=features: the latest k-means estimate, matched to the clusters by predicted
        mass (equal sizes until the first estimate)."""
        if self.params.auto_sizes == "predictions":
            return super().estimated_sizes()
        # torch.where, not an `if` on the tensor: this runs every training step, and on a GPU a
        # Python test of a device value would wait for the device each time.
        equal = torch.full_like(self.predicted_mass, 1.0 / self.n_clusters)
        return torch.where(self.feature_sizes.sum() > 0, match_prior_to_mass(self.feature_sizes, self.predicted_mass), equal)

    def method_state(self):
        return {"neighbor_index": self.neighbor_index}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        upgrade_clot_state(self, state_dict, prefix)  # checkpoints of earlier versions
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def pseudo_labels(self, logits: torch.Tensor, head: int | None = 0) -> torch.Tensor:
        """Q for one view of head `head`: Sinkhorn on log P with eps = sinkhorn_eps (1/lambda), rows
        rescaled to sum to 1; columns: the size prior matched to that head's running masses (head
        None, the over-clustering head: equal sizes). Several processes solve the global batch's
        problem (column sums all-reduced, as SwAV's distributed Sinkhorn), each keeping its rows."""
        return self.pseudo_labels_of([logits], [head])[0]

    @torch.no_grad()
    def pseudo_labels_of(self, logits: list[torch.Tensor], heads: list[int | None]) -> list[torch.Tensor]:
        """pseudo_labels of several views (one K), in order: each view's size prior is taken in
        turn, since each updates its head's running masses; then one solve for all of them
        (solve_transports), since ten small solves one by one cost a fifth of a training step."""
        log_ps, sizes = [], []
        for view_logits, head in zip(logits, heads):
            log_p = torch.log_softmax(view_logits.detach().float(), dim=1)
            b = None
            if head is not None:
                self.predicted_mass.copy_(self.head_mass[head])
                b = self.target_marginal(log_p.exp())
                self.head_mass[head].copy_(self.predicted_mass)
            log_ps.append(log_p)
            sizes.append(b)
        distributed = is_distributed()
        p = self.params
        plans = self.solve_transports(log_ps, eps=p.sinkhorn_eps, sizes=sizes, n_iters=p.sinkhorn_iters, tol=p.sinkhorn_tol, distributed=distributed, check_every=p.sinkhorn_check_every)
        # Rows of a plan sum to 1 / (global batch size); the engine gives every process as many rows.
        return [plan * (plan.shape[0] * (world_size() if distributed else 1)) for plan in plans]

    def training_step(self, batch, indices):
        if self.selflabelling:
            return self.selflabel_step(batch)
        p = self.params
        view_a, view_b = self.views(batch, 2)
        if self.neighbor_index is not None:
            # A neighbour stands in for the sample's second view: both losses then pull neighbours
            # together, which augmentations of one image alone cannot teach.
            pick = torch.randint(self.neighbor_index.shape[1], (len(indices),), device=self.neighbor_index.device)
            view_b = self.views(self.neighbor_images[self.neighbor_index[indices.to(pick.device), pick]], 1)[0]
        # One forward for both views: half the kernel launches, same batch-norm statistics.
        features = self.backbone(torch.cat([view_a, view_b]))
        z_a, z_b = self.projection_head(features).chunk(2)
        student_logits = self.cluster_head(features)
        target_logits = student_logits
        if self.teacher is not None:
            with torch.no_grad():
                # Follows the weights of the last optimizer step (the first call copies them).
                self.teacher.update_parameters(ClusterPredictor(self.backbone, self.cluster_head))
                target_logits = self.teacher(torch.cat([view_a, view_b]))
        targets = self.pseudo_labels_of([view for logits in target_logits for view in logits.chunk(2)], [head for head in range(len(target_logits)) for _ in range(2)])
        head_losses = []
        for head, logits in enumerate(student_logits):
            logits_a, logits_b = logits.chunk(2)
            q_a, q_b = targets[2 * head], targets[2 * head + 1]
            head_losses.append(0.5 * (soft_cross_entropy(logits_a, q_b) + soft_cross_entropy(logits_b, q_a)))
        head_losses = torch.stack(head_losses)
        with torch.no_grad():
            batch_head_losses = all_reduce_mean(head_losses.detach())  # the global batch's, with several processes
            first = bool((self.head_loss == 0).all())
            self.head_loss.copy_(batch_head_losses if first else 0.9 * self.head_loss + 0.1 * batch_head_losses)
            self.predicted_mass.copy_(self.head_mass[self.head_loss.argmin()])  # the predicting head's
        cluster_loss = head_losses.mean()
        if self.overcluster_head is not None:
            over_a, over_b = self.overcluster_head(features)[0].chunk(2)
            q_a, q_b = self.pseudo_labels_of([over_a, over_b], [None, None])
            cluster_loss = cluster_loss + 0.5 * (soft_cross_entropy(over_a, q_b) + soft_cross_entropy(over_b, q_a))
        contrastive_loss = nt_xent_loss(z_a, z_b, p.temperature, gather=p.gather_negatives)
        # Before cluster_start the cluster loss is still computed (the heads' running losses and the
        # gradients every process expects stay in place) but weighs nothing.
        cluster_weight = p.cluster_weight if self.clustering else 0.0
        loss = cluster_weight * cluster_loss + p.contrastive_weight * contrastive_loss
        return {"loss": loss, "cluster": cluster_loss.detach(), "contrastive": contrastive_loss.detach()}

    def selflabel_step(self, batch):
        """SCAN's self-labelling (otclust.losses.selflabel) for every head."""
        with torch.no_grad():
            weak_logits = self.cluster_head(self.backbone(self.standardize(batch)))
        strong_logits = self.cluster_head(self.backbone(self.views(batch, 1)[0]))
        losses, shares = zip(*(selflabel_loss(weak, strong, self.params.selflabel_threshold) for weak, strong in zip(weak_logits, strong_logits)))
        loss = torch.stack(losses).mean()
        return {"loss": loss, "selflabel": loss.detach(), "confident": torch.stack(shares).mean()}

    def may_leave_parameters_unused(self) -> bool:
        return bool(self.params.selflabel_epochs or self.params.selflabel_fraction)  # self-labelling skips the projection head

    def best_head(self) -> int:
        return int(torch.argmin(self.head_loss)) if len(self.head_loss) > 1 else 0

    def cluster_logits(self, x):
        return self.cluster_head(self.backbone(x))[self.best_head()]

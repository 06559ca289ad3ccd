"""SeLa: self-labelling via simultaneous clustering and representation learning (Asano et al., ICLR 2020).

The network (backbone + linear heads) is trained with plain cross-entropy on hard pseudo-labels
of one augmented view. The labels are not predicted per batch: a set number of times per run
(`label_updates`, spread evenly over the epochs, the first before any training) the whole
training set is scored and, for every head, the labels are the argmax of the entropic OT plan

    Q = diag(u) P^lambda diag(v),  rows summing to 1/N, columns to the cluster prior b,

i.e. ``otclust.ot.sinkhorn(log P, eps=1/lambda, b)``, eps being the parameter `sinkhorn_eps`.
The equipartition constraint (b uniform by default, `--cluster-proportions` otherwise) is what
rules out the collapse to one cluster.
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
so N may be far larger than a batch. At ImageNet scale (N = 1.28 M, K = 3000) even those do not
fit (15.4 GB per head in float32): once n_heads x N x K x 4 bytes exceeds `dense_label_limit_gb`,
each chunk's log-probabilities are quantized to one byte per entry on arrival and the labels come
from the chunked solver ``otclust.ot.sinkhorn_labels`` (3.84 GB per head at that size; see
``otclust.ot.large`` for what the quantization changes: labels only on near-ties). Its 8-bit grid
covers at most 64 eps (64/lambda) nats below each sample's best cluster, centred by the previous
labelling's log v (the network changes little between labellings); if the solve reports that
the grid's floor carried visible mass (`floor_mass`), the data is scored once more with the grid
centred on the new log v (at most `_LABEL_ROUNDS` scorings per labelling).

Under torchrun each process scores only its contiguous share of the samples, the Sinkhorn
column sums (and the predicted mass for the prior) are all-reduced, and the labels are gathered
so that every process holds all of them.

Prediction uses the head with the lowest running training loss (as CLOT; no labels are used),
which is head 0 when there is a single head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from otclust.budget import spread_epochs
from otclust.distributed import all_gather_rows, all_reduce_mean, is_distributed, rank, world_size
from otclust.errors import UserError
from otclust.losses.multi_head_cross_entropy import per_head_cross_entropy
from otclust.methods.base import ClusteringMethod, Renamed, reciprocal
from otclust.models import ClusterHead
from otclust.ot import QuantizedScores, sinkhorn_labels

# The chunked path scores the data again, with the grid re-centred on the new log v, while the
# solve reports more than this share of the plan's mass on the grid's floor; at most this often.
_FLOOR_MASS_LIMIT = 1e-3
_LABEL_ROUNDS = 3


@dataclass
class SelaParams:
    # Entropic eps of the labelling Sinkhorn on log-probabilities. The paper parametrises it by lambda
    # of P^lambda, eps = 1/lambda: its ImageNet lambda 25 is sinkhorn_eps 0.04, its CIFAR code's 10 is 0.1.
    sinkhorn_eps: float = 0.04
    # Whole-data re-labellings per run, spread evenly over the run's epochs (at most one per epoch),
    # so they follow the run's budget: a count per run, as the paper and its code give it (100-400
    # per run), not a period tuned for one data set.
    label_updates: int = 100
    # Clustering heads, each with its own labels; the lowest-loss head is the 'head' predictor. 10 as
    # the paper's best models (SeLa [3k x 10]); with Adam at lr 1e-4 the best of four settings on
    # the development sets (docs/ablations.md).
    n_heads: int = 10
    sinkhorn_iters: int = 1000  # cap on Sinkhorn iterations per re-labelling
    sinkhorn_tol: float = 1e-2  # relative error on the cluster marginals at which Sinkhorn stops (hard labels need no more)
    label_batch_size: int = 1024  # images per forward pass when scoring the whole training set
    dense_label_limit_gb: float = 2.0  # dense float32 scores while n_heads x N x K x 4 bytes fit (N: one process's share), else 8-bit codes
    # Former names, read as the new ones with a warning (otclust.methods.base.build_params).
    renamed: ClassVar[dict] = {"lam": Renamed("sinkhorn_eps", reciprocal, "sinkhorn_eps = 1/lam")}


class Sela(ClusteringMethod):
    name = "sela"
    Params = SelaParams
    # Paper: SGD lr 0.05, 400 epochs (ImageNet) / 800 (CIFAR), batch 256; here the run's budget
    # (otclust.budget) or configs/.
    default_config = {"batch_size": 256, "lr": 1e-4}

    def __init__(self, n_clusters, spec, params: SelaParams, backbone="auto", augment=None):
        super().__init__(n_clusters, spec, params, backbone, augment)
        if params.sinkhorn_eps <= 0:
            raise UserError(f"sela parameter sinkhorn_eps must be positive, got {params.sinkhorn_eps}")
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
        # Each head's log v of the last labelling (n_heads x K): centres the next quantization.
        self.label_log_v: torch.Tensor | None = None
        self.last_label_solve: list[dict] = []  # per head: path, iterations, error, floor mass, scorings

    # --- whole-data labelling -------------------------------------------------------------
    def update_epochs(self, total_epochs: int) -> list[int]:
        """Epochs at whose start the labels are recomputed: `label_updates` of them, evenly spaced."""
        return spread_epochs(self.params.label_updates, total_epochs)

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

    def _head_prior(self, head: int, probs: torch.Tensor) -> torch.Tensor:
        """This head's cluster prior b (target_marginal keeps a running mass: give it the head's own)."""
        self.predicted_mass.copy_(self.head_mass[head])
        sizes = self.target_marginal(probs)
        self.head_mass[head].copy_(self.predicted_mass)
        return sizes

    @torch.no_grad()
    def solve_labels(self, log_p: torch.Tensor, head: int = 0, distributed: bool = False) -> torch.Tensor:
        """Hard labels of one head: argmax_k of the Sinkhorn plan diag(u) P^lambda diag(v).

        ``distributed``: log_p holds this process's rows of the global problem.
        """
        p = self.params
        sizes = self._head_prior(head, log_p.exp())
        result = self.solve_transport(log_p, eps=p.sinkhorn_eps, b=sizes, n_iters=p.sinkhorn_iters, tol=p.sinkhorn_tol, distributed=distributed)
        self._remember(head, "dense", result.log_v, result.n_iters, result.error, 0.0, 1)
        return result.plan.argmax(dim=1)

    def _remember(self, head, path, log_v, n_iters, error, floor_mass, scorings) -> None:
        if self.label_log_v is None or self.label_log_v.shape != (self.params.n_heads, self.n_clusters):
            self.label_log_v = torch.zeros(self.params.n_heads, self.n_clusters, dtype=torch.float64)
        log_v = log_v.detach().to("cpu", torch.float64)
        self.label_log_v[head] = log_v - log_v.max()
        del self.last_label_solve[head:]
        self.last_label_solve.append(
            {"path": path, "n_iters": n_iters, "error": error, "floor_mass": floor_mass, "scorings": scorings}
        )

    @torch.no_grad()
    def head_codes(self, data: torch.Tensor, offsets: torch.Tensor | None = None, batch_size: int | None = None):
        """Every head's 8-bit quantized log-probabilities of raw data, and its mean probabilities.

        Like ``head_log_probs``, chunk by chunk in eval mode, but each chunk is quantized on
        arrival (``QuantizedScores.write``): n_heads x N x K bytes instead of 4x that in float32.
        ``offsets`` (n_heads x K, log v of a previous solve) centre each head's grid.
        """
        batch_size = batch_size or self.params.label_batch_size
        eps = self.params.sinkhorn_eps
        codes = [
            QuantizedScores(len(data), self.n_clusters, eps, device=data.device, offsets=None if offsets is None else offsets[h])
            for h in range(self.params.n_heads)
        ]
        prob_sums = torch.zeros(self.params.n_heads, self.n_clusters, dtype=torch.float64, device=data.device)
        was_training = self.training
        self.eval()
        for start in range(0, len(data), batch_size):
            features = self.backbone(self.standardize(data[start : start + batch_size]))
            for h, logits in enumerate(self.cluster_head(features)):
                log_p = torch.log_softmax(logits.float(), dim=1)
                codes[h].write(start, log_p)
                prob_sums[h] += log_p.exp().sum(dim=0, dtype=torch.float64)
        self.train(was_training)
        return codes, prob_sums / max(len(data), 1)

    @torch.no_grad()
    def quantized_labels(self, data: torch.Tensor, distributed: bool = False) -> list[torch.Tensor]:
        """Every head's labels through 8-bit codes and ``sinkhorn_labels`` (module docstring).

        The grid is centred on the previous labelling's log v; while a solve reports more than
        _FLOOR_MASS_LIMIT of its plan on the grid's floor, the data is scored again centred on the
        new log v (a decision all processes share: floor_mass is all-reduced).
        """
        p = self.params
        if self.size_penalty is not None or self.partial_tau is not None:
            raise UserError(
                "--cluster-proportions auto:TAU and auto:p2ot are not available for SeLa's 8-bit whole-data solver (used when "
                "n_heads x N x K x 4 bytes exceeds dense_label_limit_gb): use auto, or raise --param dense_label_limit_gb"
            )
        n_heads = p.n_heads
        offsets = self.label_log_v
        sizes = None
        for scoring in range(1, _LABEL_ROUNDS + 1):
            codes = None  # the previous scoring's codes go before the new ones are allocated
            codes, mean_probs = self.head_codes(data, offsets)
            if sizes is None:  # the same network: the prior (and its running mass) once per labelling
                # expand: rows whose sum and count are the shard's (what target_marginal reduces), no copy
                sizes = [self._head_prior(h, mean_probs[h].float().expand(len(data), -1)) for h in range(n_heads)]
            results = [
                sinkhorn_labels(codes[h], b=sizes[h], n_iters=p.sinkhorn_iters, tol=p.sinkhorn_tol, distributed=distributed)
                for h in range(n_heads)
            ]
            if max(r.floor_mass for r in results) <= _FLOOR_MASS_LIMIT:
                break
            offsets = torch.stack([r.log_v for r in results])
        for h, r in enumerate(results):
            self._remember(h, "quantized", r.log_v, r.n_iters, r.error, r.floor_mass, scoring)
        return [r.labels for r in results]

    def _uses_dense_labels(self, rows: int) -> bool:
        """Dense float32 log-probabilities while n_heads x rows x K x 4 bytes fit the limit."""
        return self.params.n_heads * rows * self.n_clusters * 4 <= self.params.dense_label_limit_gb * 1e9

    @torch.no_grad()
    def update_labels(self, data: torch.Tensor) -> None:
        """New labels for every head; with several processes each scores its share of the data."""
        n, world = len(data), world_size()
        sharded = is_distributed() and n >= world
        if sharded:  # contiguous shares, sizes differing by at most one; the same path everywhere
            own = data[rank() * n // world : (rank() + 1) * n // world]
            largest = -(-n // world)
        else:
            own, largest = data, n
        if self._uses_dense_labels(largest):
            log_p = self.head_log_probs(own)
            labels = [self.solve_labels(log_p[h], h, distributed=sharded) for h in range(len(log_p))]
            del log_p
        else:
            labels = self.quantized_labels(own, distributed=sharded)
        labels = torch.stack(labels)
        if sharded:
            labels = all_gather_rows(labels.T.contiguous()).T.contiguous()
        self.labels = labels
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
        return {"labels": self.labels, "label_epochs_done": list(self.label_epochs_done), "label_log_v": self.label_log_v}

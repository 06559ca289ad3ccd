"""The contract between a clustering method and the training engine.

A method owns its networks, its augmentations and its losses; the engine owns the loop, the
optimizer, devices, checkpoints and metrics. A method implements `training_step` (one batch to
a dict of losses) and `cluster_logits` (standardised inputs to K cluster scores); hooks let
methods that need whole-data passes (DeepCluster's k-means, SeLa's labelling) run them.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from otclust.budget import warn_deprecated
from otclust.data.augment import BatchAugmenter, FeatureAugmenter, Normalizer, augment_config_from_dict
from otclust.distributed import all_reduce_sum, is_distributed
from otclust.errors import UserError
from otclust.models import build_backbone
from otclust.ot import sinkhorn, sinkhorn_batched, sinkhorn_partial, sinkhorn_semi_relaxed, training_rho
from otclust.ot.priors import estimate_sizes, match_prior_to_mass


@dataclass
class InputSpec:
    """What the model was trained on: predict converts new data to this before the forward pass."""

    n_samples: int
    channels: int | None = None
    image_size: tuple[int, int] | None = None
    feature_dim: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    @property
    def is_features(self) -> bool:
        return self.feature_dim is not None

    @classmethod
    def from_dataset(cls, dataset, sample_size: int = 10000, chunk: int = 256) -> "InputSpec":
        """Per-feature (vectors) or per-channel (images) mean and std, in bounded memory.

        Images: from a seeded sample of at most ``sample_size`` images. Features: from all rows.
        Either way a chunk of ``chunk`` rows at a time is converted to float64 and summed, so
        no float copy of the data set is ever made (a memory-mapped set is read chunk by chunk).
        """
        data = dataset.data
        n = len(data)
        if dataset.is_features:
            rows = torch.arange(n)
        else:
            rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:sample_size].sort().values
        dims = (0,) if dataset.is_features else (0, 2, 3)
        width = int(data.shape[1])
        total = torch.zeros(width, dtype=torch.float64)
        count = 0
        for start in range(0, len(rows), chunk):
            block = data[rows[start : start + chunk]].double()
            total += block.sum(dim=dims)
            count += block.numel() // width
        mean = total / max(count, 1)
        squares = torch.zeros(width, dtype=torch.float64)
        shape = (1, width) if dataset.is_features else (1, width, 1, 1)
        for start in range(0, len(rows), chunk):
            block = data[rows[start : start + chunk]].double() - mean.view(shape)
            squares += (block * block).sum(dim=dims)
        std = (squares / max(count - 1, 1)).sqrt()
        if dataset.is_features:
            return cls(n_samples=n, feature_dim=width, mean=mean.tolist(), std=std.clamp(min=1e-6).tolist())
        mean, std = mean / 255.0, (std / 255.0).clamp(min=1e-3)
        return cls(n_samples=n, channels=width, image_size=(int(data.shape[2]), int(data.shape[3])), mean=mean.tolist(), std=std.tolist())


@dataclass
class NoParams:
    """A method without hyper-parameters of its own."""


@dataclass(frozen=True)
class Renamed:
    """A method parameter's former name, still accepted (with a FutureWarning) for the one that
    replaced it, so that one idea has one name in every method. A Params dataclass lists its
    former names in a class attribute `renamed` ({old name: Renamed}); `convert` turns a value
    given under the old name into the new one's (None: the same value), `relation` says how the
    two relate (for the warning, when they differ)."""

    new: str
    convert: Callable[[Any], Any] | None = None
    relation: str = ""


def reciprocal(value):
    """1 / value, for a parameter renamed to its reciprocal (lambda -> eps = 1/lambda); the same
    float division the methods did, so the converted value gives bit for bit the same runs."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"must be a positive number, got {value!r}")
    return 1.0 / value


def renamed_parameters(params_class: type) -> dict[str, Renamed]:
    return dict(getattr(params_class, "renamed", {}))


def parameter_names(params_class: type, name: str) -> set[str]:
    """Every name of the parameter that `name` names: its current one and its former ones."""
    renamed = renamed_parameters(params_class)
    current = renamed[name].new if name in renamed else name
    return {current, *(old for old, rename in renamed.items() if rename.new == current)}


def override_params(params_class: type, base: dict, overrides: dict) -> dict:
    """`base` updated with `overrides`, where a parameter set in `overrides` under any of its names
    replaces that parameter in `base` under every other name (a recipe's sinkhorn_eps gives way
    to --param lam, as --epochs to --steps); both names among the overrides stay an error."""
    merged = dict(base)
    for key in overrides:
        for other in parameter_names(params_class, key) - {key}:
            merged.pop(other, None)
    merged.update(overrides)
    return merged


def current_param_names(params_class: type, values: dict, method_name: str, warn: bool = True) -> dict:
    """`values` with every former parameter name replaced by its current one (the value converted,
    the order kept), with a FutureWarning for each (`warn`); a UserError when both names are given."""
    renamed = renamed_parameters(params_class)
    out = {}
    for key, value in values.items():
        if key not in renamed:
            out[key] = value
            continue
        rename = renamed[key]
        if rename.new in values:
            raise UserError(f"{method_name} parameters {key} and {rename.new} are both set, and {key} is the former name of {rename.new}: give only {rename.new}")
        if rename.convert is not None:
            try:
                value = rename.convert(value)
            except ValueError as error:
                raise UserError(f"parameter '{key}' of method '{method_name}' {error}") from None
        if warn:
            relation = f" ({rename.relation})" if rename.relation else ""
            given = f"{rename.new}={value!r}{relation}" if rename.convert is not None else rename.new
            warn_deprecated(values, key, rename.new, method_name, reason=f"use {given}, the name this setting has in every method")
        out[rename.new] = value
    return out


# Parameters that mean the same in every method that has them and only make sense above 0 (a
# temperature divides the scores, an iteration or head count of 0 leaves nothing to run): refused
# here rather than as an IndexError, a solver's ValueError or a NaN loss in the middle of training.
POSITIVE_PARAMETERS = {
    "sinkhorn_eps", "sinkhorn_iters", "sinkhorn_check_every", "n_heads", "kmeans_restarts", "kmeans_iters",
    "projection_dim", "hidden_dim", "embedding_dim", "label_batch_size",
}  # and every *temperature


def _is_non_finite_text(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return not math.isfinite(float(value))
    except ValueError:
        return False


def build_params(params_class: type, values: dict, method_name: str, warn: bool = True):
    """Fill a method's Params dataclass from a dict, rejecting unknown names and wrong types;
    former names (`Renamed`) are read as their current ones, with a FutureWarning (`warn`)."""
    values = current_param_names(params_class, values, method_name, warn)
    fields = {f.name: f for f in dataclasses.fields(params_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        raise UserError(f"unknown parameter(s) {', '.join(unknown)} for method '{method_name}': valid ones are {valid}")
    hints = typing.get_type_hints(params_class)
    checked = {}
    for key, value in values.items():
        expected = hints[key]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is float and (_is_non_finite_text(value) or (isinstance(value, float) and not math.isfinite(value))):
            # YAML reads nan and inf as text, .nan and .inf as floats: either way no setting is meant to be one.
            raise UserError(f"parameter '{key}' of method '{method_name}' must be a finite number, got {value!r}")
        if expected in (int, float, bool, str) and not isinstance(value, expected):
            raise UserError(f"parameter '{key}' of method '{method_name}' must be {expected.__name__}, got {value!r}")
        if (key in POSITIVE_PARAMETERS or key.endswith("temperature")) and isinstance(value, (int, float)) and not value > 0:
            raise UserError(f"parameter '{key}' of method '{method_name}' must be positive, got {value!r}")
        checked[key] = value
    return params_class(**checked)


class ClusteringMethod(nn.Module):
    """Base of every method. Subclasses set `name`, `Params`, and implement the two abstract calls."""

    name: ClassVar[str] = "base"
    Params: ClassVar[type] = NoParams
    # Methods without a trained network (k-means) set this False; the engine then skips the loop.
    trainable: ClassVar[bool] = True
    # FitConfig values this method runs best with (epochs, lr...), below --config files and flags.
    default_config: ClassVar[dict] = {}
    # 'auto:p2ot[:TAU]': KL strength of progressive partial OT (None: the full mass is transported).
    partial_tau: float | None = None
    # Share of training done, in [0, 1], set by the engine before each step; 'auto:p2ot' ramps
    # the transported mass with it. None (never set, e.g. a method driven by hand): all mass.
    training_progress: float | None = None
    # How clusters are read off after training when --readout is not given (otclust.readout):
    # for every trained method the smoothed k-means read-out of its backbone features, since a
    # network's features are often good where its head is poor and the read-out recovers them
    # (docs/results.md section 3); `--readout head` gives the method's own predictions.
    default_readout: ClassVar[str] = "smoothed"

    def __init__(self, n_clusters: int, spec: InputSpec, params, backbone: str = "auto", augment: dict | None = None):
        super().__init__()
        self.n_clusters = n_clusters
        self.spec = spec
        self.params = params
        self.backbone_name = backbone
        self.augment_settings = dict(augment or {})
        if spec.is_features:
            mean = torch.tensor(spec.mean, dtype=torch.float32)
            std = torch.tensor(spec.std, dtype=torch.float32)
            self.augmenter = FeatureAugmenter(mean, std)
            self.standardize = self.augmenter.standardize
        else:
            augment_config = augment_config_from_dict(augment, spec.channels, spec.image_size)
            normalizer = Normalizer(spec.mean, spec.std, per_image=augment_config.per_image, edges=augment_config.edges)
            self.augmenter = BatchAugmenter(augment_config, normalizer)
            self.standardize = normalizer
        # Target cluster sizes for OT-based methods; the engine installs the run's prior.
        self.prior_mode = "uniform"
        self.size_penalty: float | None = None  # 'auto:TAU': KL strength of relaxed cluster sizes
        self.register_buffer("cluster_prior", torch.full((n_clusters,), 1.0 / n_clusters))
        # Running mean of the predicted cluster masses: matches a known prior to clusters and
        # estimates sizes in 'auto' mode.
        self.register_buffer("predicted_mass", torch.full((n_clusters,), 1.0 / n_clusters))
        # The read-outs fitted after training (otclust.readout) and which one predicts ("head": none).
        self.readout_fits: dict = {}
        self.predictor = "head"

    def make_backbone(self) -> nn.Module:
        return build_backbone(self.backbone_name, self.spec.channels, self.spec.image_size, self.spec.feature_dim)

    def forward(self, batch: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training step. The engine calls the method through this (as `model(batch, indices)`)
        because DistributedDataParallel only synchronises gradients of what runs in `forward`."""
        return self.training_step(batch, indices)

    # --- what every method implements ---------------------------------------------------
    def training_step(self, batch: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch of raw data (uint8 images or float features) -> {'loss': total, ...parts}."""
        raise NotImplementedError

    def cluster_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised inputs -> N x K scores whose softmax is the cluster probability."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised inputs -> the feature vectors shown in reports (default: backbone output)."""
        return self.backbone(x)

    # --- hooks (optional) -----------------------------------------------------------------
    def on_fit_start(self, trainer) -> None:
        """Called once before the first epoch (and after a resume), with the trainer's data in place."""

    def on_fit_end(self, trainer) -> None:
        """Called once after the last epoch, before the final prediction (e.g. to refit a predictor)."""

    def on_epoch_start(self, trainer, epoch: int) -> None:
        """Called before each epoch; whole-data labelling steps (k-means, SeLa) go here."""

    def on_epoch_end(self, trainer, epoch: int, losses: dict[str, float]) -> None:
        """Called after each epoch with the epoch's mean losses."""

    def epoch_order(self, trainer, epoch: int) -> torch.Tensor | None:
        """Sample indices for this epoch's batches; None means a uniform random permutation.

        DeepCluster overrides it to sample uniformly over pseudo-labels.
        """
        return None

    def fit_without_training(self, trainer) -> None:
        """For methods with trainable = False: compute the clustering in one go."""
        raise NotImplementedError

    @classmethod
    def training_batch_size(cls, params: dict, n_samples: int, batch_size: int) -> int:
        """The batch a run of n_samples trains with, given --batch-size (or the method's default)
        and the --param values: as given, unless a method shrinks it for small sets."""
        return batch_size

    @classmethod
    def short_budget(cls, params: dict, features: bool) -> bool:
        """Whether a run with these --param values on this data gets the short default budget
        (otclust.budget), decided before the method is built, since its schedules follow it."""
        return False

    def parameter_groups(self) -> list[dict]:
        """Groups for the optimizer; override to give e.g. cluster centres another learning rate."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def may_leave_parameters_unused(self) -> bool:
        """Whether some training steps leave parameters without a gradient (a part skipped or frozen).

        With several processes the engine then has DistributedDataParallel look for such
        parameters at every step (find_unused_parameters, one extra pass over the graph). A method
        whose every step uses every parameter returns False.
        """
        return True

    def method_state(self) -> dict:
        """Non-parameter state to checkpoint (pseudo-labels, queues); tensors or plain values."""
        return {}

    def load_method_state(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    # --- shared by all ---------------------------------------------------------------------
    def set_cluster_prior(self, mode: str, sizes: torch.Tensor | None, size_penalty: float | None = None, partial_tau: float | None = None) -> None:
        """Install the run's size prior; size_penalty (from 'auto:TAU') relaxes the OT columns,
        partial_tau (from 'auto:p2ot[:TAU]') makes the OT progressive partial (otclust.ot.partial)."""
        if size_penalty is not None and partial_tau is not None:
            raise UserError("--cluster-proportions: 'auto:TAU' and 'auto:p2ot' are two different modes; choose one")
        self.prior_mode = mode
        self.size_penalty = size_penalty
        self.partial_tau = partial_tau
        if sizes is not None:
            self.cluster_prior.copy_(sizes)

    @torch.no_grad()
    def solve_transport(self, scores, eps, b=None, n_iters=None, tol=None, warm_start=None, distributed=False):
        """The OT problem behind a method's pseudo-labels -> SinkhornResult: balanced Sinkhorn;
        under 'auto:TAU' the semi-relaxed one whose column sums are only pulled towards b; under
        'auto:p2ot' the progressive partial one, whose plan rows sum to each sample's labelled
        share (so a soft cross-entropy on plan * N weighs the samples by it), with the share
        rho = training_rho(training_progress). Warm starts are used by the balanced solver only."""
        if self.partial_tau is not None:
            return sinkhorn_partial(
                scores,
                eps=eps,
                rho=training_rho(self.training_progress),
                tau=self.partial_tau,
                b=b,
                n_iters=n_iters or 1000,
                tol=tol or 1e-4,
                distributed=distributed,
            )
        if self.size_penalty is None:
            return sinkhorn(scores, eps=eps, b=b, n_iters=n_iters, tol=tol, warm_start=warm_start, distributed=distributed)
        return sinkhorn_semi_relaxed(
            scores, eps=eps, tau=self.size_penalty, b=b, n_iters=n_iters or 1000, tol=tol or 1e-4, distributed=distributed
        )

    @torch.no_grad()
    def solve_transports(self, scores: list[torch.Tensor], eps, sizes: list, n_iters=None, tol=None, distributed=False, check_every=1) -> list[torch.Tensor]:
        """The plans of several problems of one shape (heads, views): solve_transport on each. The
        balanced ones are solved together (otclust.ot.batched: one batched product per half-step
        for all of them, the same stopping rule per problem, tested every `check_every` iterations);
        the relaxed modes one by one."""
        if self.partial_tau is not None or self.size_penalty is not None:
            return [self.solve_transport(s, eps, b=b, n_iters=n_iters, tol=tol, distributed=distributed).plan for s, b in zip(scores, sizes)]
        k, device = scores[0].shape[1], scores[0].device
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        priors = torch.stack([torch.full((k,), 1.0 / k, dtype=dtype, device=device) if b is None else b.to(device, dtype) for b in sizes])
        return list(sinkhorn_batched(torch.stack(scores), eps, b=priors, n_iters=n_iters, tol=tol, distributed=distributed, check_every=check_every).plan)

    @torch.no_grad()
    def target_marginal(self, probs: torch.Tensor) -> torch.Tensor:
        """Column marginal b for this batch's OT problem, given the batch's predicted probabilities.

        With several processes the batch is the global one: its mean predicted mass is averaged
        over the processes (an all_reduce), so every process returns the same b.
        """
        if is_distributed():
            stats = torch.cat([probs.float().sum(dim=0), probs.new_tensor([probs.shape[0]], dtype=torch.float32)])
            stats = all_reduce_sum(stats)
            batch_mass = stats[:-1] / stats[-1]
        else:
            batch_mass = probs.float().mean(dim=0)
        self.predicted_mass.mul_(0.9).add_(0.1 * batch_mass)
        if self.prior_mode == "known":
            return match_prior_to_mass(self.cluster_prior, self.predicted_mass)
        if self.prior_mode == "auto":
            return self.estimated_sizes()
        return self.cluster_prior

    @torch.no_grad()
    def estimated_sizes(self) -> torch.Tensor:
        """'auto' mode's cluster sizes: by default the running predicted masses (estimate_sizes)."""
        return estimate_sizes(self.predicted_mass)

    @torch.no_grad()
    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw batch -> N x K cluster probabilities (no augmentation), from the run's predictor:
        the fitted read-out of the features, or the method's own cluster scores."""
        x = self.standardize(batch)
        readout = self.readout_fits.get(self.predictor)
        logits = readout.logits(self.embed(x)) if readout is not None else self.cluster_logits(x)
        return torch.softmax(logits.float(), dim=1)

    @torch.no_grad()
    def embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return self.embed(self.standardize(batch)).float()

    def views(self, batch: torch.Tensor, count: int = 2) -> list[torch.Tensor]:
        return [self.augmenter(batch) for _ in range(count)]

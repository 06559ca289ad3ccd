"""The read-out stage: after training, how a network's clusters are read off.

Any method with features (`embed_batch`) can be read out three ways (`--readout`):

- head: the method's own prediction (`cluster_logits`: its cluster head, or its centroids);
- kmeans: k-means on the unit-normalised features of the training set, the restart kept by
  `choose_kmeans_restart` under the run's size prior; the nearest centre (cosine) predicts;
- smoothed: the same k-means on features first averaged over their nearest neighbours
  (`smoothed_unit_features`); since those clusters exist only for the training samples, a
  logistic regression from each sample's own unit feature carries them to any image.

Each method declares its default (`default_readout`): smoothed for every trained method, head for
k-means on pixels. A fitted read-out is K x D weights and K
biases on unit features (`FittedReadout`), kept in the checkpoint as plain tensors.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from otclust.choose_k import CRITERIA, choose_k, close_calls
from otclust.errors import UserError
from otclust.readout.kmeans import KMEANS_CHOICES, choose_kmeans_restart
from otclust.readout.neighbors import nearest_neighbors, smoothed_unit_features

READOUTS = ("head", "kmeans", "smoothed")
# Read-out scored beside the head when the run's predictor is the head: the one shared by all.
SHARED_READOUT = "smoothed"
# Parameters of earlier versions that are now read-out settings, per method: old -> new name
# (besides CLOT's predict_by, now --readout). Other methods' parameters of the same name (OT
# k-means' kmeans_restarts) are their own.
DEPRECATED_PARAMS = {"clot": {"smooth_neighbors": "neighbors", "smooth_rounds": "rounds", "kmeans_restarts": "restarts", "kmeans_choice": "choice"}}
# kmeans read-out: logits are cosines to the centres / 0.1, the confidences of a cosine head.
COSINE_TEMPERATURE = 0.1


@dataclass
class LegacyReadoutParams:
    """CLOT's read-out settings of earlier versions (DEPRECATED_PARAMS), still accepted as method
    parameters and read, with a warning, by `resolve_readout`: --readout and --readout-param."""

    predict_by: str | None = None
    smooth_neighbors: int | None = None
    smooth_rounds: int | None = None
    kmeans_restarts: int | None = None
    kmeans_choice: str | None = None


@dataclass
class ReadoutParams:
    """Settings of the kmeans and smoothed read-outs (`--readout-param KEY=VALUE`)."""

    neighbors: int = 10  # smoothed: nearest neighbours each feature is averaged over
    rounds: int = 5  # smoothed: rounds of that averaging
    restarts: int = 50  # k-means++ restarts; one restart finds the best partition only sometimes
    choice: str = "prior"  # prior: lowest inertia under the run's size prior; inertia: plain k-means'
    k_criterion: str = "stability"  # --clusters auto: how K is chosen (otclust.choose_k.CRITERIA)
    # One more k-means candidate, started from the network head's clusters (k-means++ restarts can
    # all miss the partition the head points to). Off: on 300 images the head's partition was the
    # cheaper one under equal sizes and 4 ACC points worse (docs/ablations.md).
    head_start: bool = False
    # Sizes unknown (--cluster-proportions auto): equal sizes are kept, in training (CLOT's size
    # estimate) and in the read-out's restart choice, unless they cost at least this much more,
    # relative, than the free k-means (otclust.readout.kmeans.equal_size_excess). 0: never kept.
    auto_min_excess: float = 0.0

    def validate(self) -> "ReadoutParams":
        if self.neighbors < 1 or self.rounds < 0 or self.restarts < 1 or self.choice not in KMEANS_CHOICES:
            raise UserError(
                f"read-out settings need neighbors >= 1, rounds >= 0, restarts >= 1 and choice prior or inertia; got "
                f"neighbors={self.neighbors}, rounds={self.rounds}, restarts={self.restarts}, choice={self.choice!r}"
            )
        if not self.auto_min_excess >= 0:
            raise UserError(f"--readout-param auto_min_excess must be >= 0, got {self.auto_min_excess}")
        if self.k_criterion not in CRITERIA:
            raise UserError(f"--readout-param k_criterion={self.k_criterion}: choose one of {', '.join(CRITERIA)}")
        return self


@dataclass
class FittedReadout:
    """A read-out fitted to a network: logits = unit(features) @ weight.T + bias."""

    name: str
    weight: torch.Tensor  # K x D
    bias: torch.Tensor  # K

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.to(features.device), self.bias.to(features.device)
        return F.normalize(features.float(), dim=1) @ weight.T + bias


def check_readout_name(name: str | None) -> None:
    if name is not None and name not in READOUTS:
        raise UserError(f"--readout must be one of {', '.join(READOUTS)}, got '{name}'")


def deprecated_settings(method) -> tuple[str | None, dict]:
    """(read-out name or None, settings) from a method's deprecated parameters (CLOT's
    predict_by, smooth_neighbors, ...; None where unset), with a warning when any is set."""
    if method.name not in DEPRECATED_PARAMS:
        return None, {}
    renamed, params = DEPRECATED_PARAMS[method.name], method.params
    predict_by = params.predict_by
    values = {new: getattr(params, old) for old, new in renamed.items() if getattr(params, old) is not None}
    if predict_by is None and not values:
        return None, {}
    used = ", ".join(["predict_by"] * (predict_by is not None) + [old for old, new in renamed.items() if new in values])
    warnings.warn(f"method parameter(s) {used} are deprecated: use --readout head|kmeans|smoothed and --readout-param", FutureWarning, stacklevel=3)
    if predict_by not in (None, "head", "kmeans", "auto"):
        raise UserError(f"parameter predict_by (deprecated: use --readout) must be 'head', 'kmeans' or 'auto', got {predict_by!r}")
    if predict_by is None:
        return None, values
    return ("head" if predict_by == "head" else "kmeans" if values.get("rounds") == 0 else "smoothed"), values


def resolve_readout(config, method) -> tuple[str, ReadoutParams]:
    """The run's predictor and read-out settings: --readout and --readout-param, over the
    method's deprecated parameters for them (`deprecated_settings`), over its defaults."""
    legacy_name, legacy_values = deprecated_settings(method)
    name = config.readout or legacy_name or method.default_readout
    check_readout_name(name)
    values = {**legacy_values, **(config.readout_params or {})}
    fields = {f.name: type(f.default) for f in dataclasses.fields(ReadoutParams)}  # the type of each default
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown read-out setting(s) {', '.join(unknown)}: valid ones are {', '.join(fields)}")
    for key, value in values.items():
        expected = fields[key]
        accepted = (int, float) if expected is float else expected  # 1 is a fine number where 0.5 is
        if not isinstance(value, accepted) or (isinstance(value, bool) and expected is not bool):
            shown = "true or false" if expected is bool else "a number" if expected is float else expected.__name__
            raise UserError(f"read-out setting '{key}' must be {shown}, got {value!r}")
    return name, ReadoutParams(**values).validate()


def fit_linear_readout(features: torch.Tensor, labels, n_clusters: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K x D weights and K biases of a multinomial logistic regression from features to labels.

    A cluster without samples gets a bias that no logit of the others can lose to."""
    # Imported here: scikit-learn takes a second to import, and most commands never fit one.
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x = features.detach().double().cpu().numpy()
    weight = torch.zeros(n_clusters, x.shape[1])
    bias = torch.full((n_clusters,), -1e4)
    present = np.unique(labels)
    if len(present) == 1:  # k-means put every point in one cluster (e.g. identical images): nothing to separate
        bias[int(present[0])] = 0.0
        return weight, bias
    with threadpool_limits(limits=max(1, torch.get_num_threads())):
        model = LogisticRegression(C=10.0, max_iter=1000, random_state=seed % 2**32).fit(x, labels)
    coef, intercept = torch.from_numpy(model.coef_).float(), torch.from_numpy(model.intercept_).float()
    classes = torch.from_numpy(model.classes_).long()
    if len(classes) == 2:  # scikit-learn keeps one row: the log-odds of the second class
        weight[classes[1]], bias[classes[0]], bias[classes[1]] = coef[0], 0.0, intercept[0]
    else:
        weight[classes], bias[classes] = coef, intercept
    return weight, bias


def fit_readout(
    name: str,
    features: torch.Tensor,
    n_clusters: int,
    seed: int,
    params: ReadoutParams,
    prior_mode: str = "uniform",
    cluster_prior: torch.Tensor | None = None,
    neighbor_index: torch.Tensor | None = None,
    start_labels: np.ndarray | None = None,
) -> FittedReadout:
    """Fit read-out `name` ('kmeans' or 'smoothed') to N x D training features.

    The k-means restart is chosen under the run's size prior: equal sizes ('uniform'), the known
    proportions ('known'), or, when they are unknown ('auto'), equal sizes unless they cost at
    least params.auto_min_excess more than the lowest plain inertia, which is then kept.
    `start_labels` (the head's clusters of the training set) add one k-means run started there."""
    choice, sizes = params.choice, None
    if prior_mode == "known":
        sizes = cluster_prior
    elif prior_mode == "auto":
        choice = "unknown"
    unit = F.normalize(features.float(), dim=1).cpu()
    if name == "kmeans":
        centers = choose_kmeans_restart(unit, n_clusters, seed, params.restarts, choice, sizes, start_labels, params.auto_min_excess).centers
        return FittedReadout(name, F.normalize(centers, dim=1) / COSINE_TEMPERATURE, torch.zeros(n_clusters))
    if name != "smoothed":
        raise ValueError(f"no read-out to fit for '{name}'")
    smoothed = smoothed_unit_features(features, params.neighbors, params.rounds, neighbor_index)
    chosen = choose_kmeans_restart(smoothed, n_clusters, seed, params.restarts, choice, sizes, start_labels, params.auto_min_excess)
    return FittedReadout(name, *fit_linear_readout(unit, chosen.labels, n_clusters, seed))


def fit_method_readout(
    trainer, method, name: str, params: ReadoutParams, k_range: tuple[int, int] | None = None, head_labels: np.ndarray | None = None
) -> tuple[FittedReadout, dict | None]:
    """Fit read-out `name` to the method's features of the trainer's training set (labels never used).

    `head_labels`: the head's cluster of each training sample, given when params.head_start asks
    for a k-means run started there (used only when the read-out's K is the head's).

    With `k_range` (--clusters auto:MIN-MAX) K is first chosen by `otclust.choose_k` on the very
    points the read-out's k-means clusters (smoothed or plain unit features), and the read-out is
    fitted with that K; the second value then records the choice (else None)."""
    features = torch.from_numpy(trainer.embed(trainer.train_data)).to(trainer.train_data.device)
    seed = trainer.config.seed
    neighbor_index = None
    if name == "smoothed" and params.rounds > 0:
        neighbor_index = nearest_neighbors(features, params.neighbors, search_dtype=trainer.precision.search_dtype)
    if k_range is None:
        return fit_readout(name, features, method.n_clusters, seed, params, method.prior_mode, method.cluster_prior, neighbor_index, head_labels), None
    points = None
    if params.k_criterion != "eigengap":  # the eigengap reads the unsmoothed features' kNN graph
        rounds = params.rounds if name == "smoothed" else 0
        points = smoothed_unit_features(features, params.neighbors, rounds, neighbor_index).double().numpy()
    k, curve = choose_k(
        features.cpu().numpy(), *k_range, seed=seed, criterion=params.k_criterion, smooth_neighbors=params.neighbors, points=points, neighbor_index=neighbor_index
    )
    stored = {key: round(value, 4) for key, value in curve.items()}  # the close calls are those of the curve metrics.json keeps
    selection = {"criterion": params.k_criterion, "range": list(k_range), "chosen": k, "close": close_calls(params.k_criterion, stored, k),
                 "training_clusters": method.n_clusters, "curve": {str(key): value for key, value in stored.items()}}
    # Sizes: the known prior is refused with auto (FitConfig.validate); uniform means K equal ones.
    start = head_labels if k == method.n_clusters else None
    return fit_readout(name, features, k, seed, params, method.prior_mode, None, neighbor_index, start), selection


def readout_state(method) -> dict:
    """The checkpoint's part for the read-out: plain strings and tensors (loads with weights_only)."""
    fits = {name: {"weight": fit.weight.cpu(), "bias": fit.bias.cpu()} for name, fit in method.readout_fits.items()}
    return {"predictor": method.predictor, "fits": fits}


def take_legacy_readout(state_dict: dict, prefix: str, head_temperature: float = COSINE_TEMPERATURE) -> FittedReadout | None:
    """The read-out a CLOT checkpoint of an earlier version kept in its weights (readout_weight
    and readout_bias; before those, nearest k-means centres, feature_centers), removed from
    `state_dict`; None when it predicted by its head."""
    weight, bias = state_dict.pop(prefix + "readout_weight", None), state_dict.pop(prefix + "readout_bias", None)
    centers = state_dict.pop(prefix + "feature_centers", None)
    if centers is not None:
        weight, bias = centers / head_temperature, torch.zeros(len(centers))
    if weight is None or not bool(weight.any()):
        return None
    name = "smoothed" if bool(bias.any()) else "kmeans"
    return FittedReadout(name, weight, bias)


def install_readout(method, state: dict | None, predictor: str | None = None) -> None:
    """Put a checkpoint's read-outs on the method; `predictor` (default: the run's) predicts.

    A checkpoint without a read-out part keeps whatever the method's own loading set up (a CLOT
    model of an earlier version carries its read-out in its weights)."""
    if state is not None:
        method.readout_fits = {name: FittedReadout(name, fit["weight"], fit["bias"]) for name, fit in state["fits"].items()}
        method.predictor = state["predictor"]
    if predictor is None:
        return
    check_readout_name(predictor)
    if predictor != "head" and predictor not in method.readout_fits:
        fitted = ", ".join(["head", *method.readout_fits]) or "head"
        raise UserError(f"this model has no fitted '{predictor}' read-out (it has: {fitted}); refit with --readout {predictor}")
    method.predictor = predictor

"""scikit-learn style access: OTClust(method=..., n_clusters=K).fit(X).labels_.

What X means (fit and predict alike):

* 2-D ``(N, D)``: feature vectors (e.g. embeddings, standardised measurements), used as given:
  any finite real values, negative ones included; the model standardises them itself.
* 3-D ``(N, H, W)`` or 4-D ``(N, H, W, C)`` / ``(N, C, H, W)`` with C = 1 or 3: images.
  ``uint8`` is taken as is (0..255). Other integer types must lie in 0..255. Floats must be
  intensities in [0, 1] (scaled by 255) or values in [0, 255]; both are rounded to 8 bits, as
  every image the CLI loads is. Which of the two is decided at fit (all values <= 1: [0, 1])
  and kept for predict, so a dark batch is read as the training images were. Floats almost all
  in [0, 1] (99%) but not all are refused: a few values just above 1 would otherwise turn
  [0, 1] images into 0..255 ones rounded to 0 or 1. Anything else (negative, above 255:
  standardised or 16-bit images) is refused with one line: pass such data as feature vectors
  (``X.reshape(len(X), -1)``) or rescale it, since silently clipping it would destroy it.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted

from otclust.checkpoint import to_plain, trained_state, write_checkpoint
from otclust.choose_k import largest_k
from otclust.config import FitConfig
from otclust.data import ImageDataset, conform
from otclust.data.embeddings import features_for_model, pretrained_training_data
from otclust.engine import kept_global_random_state, load_trained, predict_in_batches, read_checkpoint
from otclust.errors import OTClustWarning, UserError
from otclust.k_search import fit_default_k_range, fit_model
from otclust.methods import get_method_class
from otclust.models.pretrained import is_pretrained


class InputValueError(UserError, ValueError):
    """Bad X: a one-line UserError that scikit-learn (and its estimator checks) also see as a ValueError."""


class InputTypeError(UserError, TypeError):
    """X of a type that cannot be clustered (sparse, non-numeric objects); also a TypeError."""


@contextlib.contextmanager
def settings_errors_as_value_errors():
    """A setting the user gave wrong (a UserError of the config or the method's parameters) as a
    ValueError too, as scikit-learn's estimators raise for invalid parameters: a caller catching
    ValueError must not miss it."""
    try:
        yield
    except UserError as error:
        if isinstance(error, (ValueError, TypeError)):
            raise
        raise InputValueError(str(error)) from None


# The code the estimator shares with the command line words its errors and warnings for the
# command line (`--clusters 5`, `--param rotation=false`), where tests/commands pin them. The
# estimator is where Python users meet those messages, and it already maps its parameters onto
# those settings (`_config`), so it maps the option names back here: one table, instead of a
# switch between two vocabularies threaded through every check of config, priors, methods and
# engine. Options OTClust has no parameter for (--readout, --readout-param) are left as they are:
# they name what the command line offers. --download is said to be the command line's: OTClust
# never downloads, and a user told to pass it would look for it among OTClust's parameters.
_PARAMETER_OF_OPTION = {
    "clusters": "n_clusters", "cluster-proportions": "cluster_proportions", "epochs": "epochs", "steps": "steps", "batch-size": "batch_size",
    "lr": "lr", "seed": "seed", "device": "device", "backbone": "backbone", "weights": "weights", "param": "params", "augment": "augment",
}
_DOWNLOAD = re.compile(r"(?<![\w-])--download(?![\w-])")
_SWITCH_OF_OPTION = {"cpu-amp": "cpu_amp=True", "no-refit": "refit=False", "image-size": "image size of X"}  # options without a value
_OPTION = re.compile(r"(?<![\w-])--(" + "|".join(sorted([*_PARAMETER_OF_OPTION, *_SWITCH_OF_OPTION], key=len, reverse=True)) + r")(?![\w-])(?: ([^\s'\"]+?)(?=[:;,.)]?(?:\s|$)))?")
# Words that follow an option as its value (`--device cpu`), not as the next word of the sentence.
_VALUE_WORDS = {"auto", "cpu", "cuda", "mps", "mlp"}


def _python_value(text: str) -> str:
    """A command-line value as a Python literal: placeholders (K, PATH) as they are."""
    if re.fullmatch(r"[A-Z][A-Z_-]*", text):
        return text
    if "|" in text:  # alternatives: fc|conv
        return "|".join(_python_value(part) for part in text.split("|"))
    if text in ("true", "false"):
        return text.title()
    try:
        return repr(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return repr(text)


def _python_option(match: re.Match) -> str:
    option, value = match.group(1), match.group(2)
    if option in _SWITCH_OF_OPTION:
        return _SWITCH_OF_OPTION[option] + (f" {value}" if value else "")
    name = _PARAMETER_OF_OPTION[option]
    if value and option in ("param", "augment"):  # KEY=VALUE, or the KEY alone
        key, _, setting = value.partition("=")
        return f"{name}={{{key!r}: {_python_value(setting)}}}" if setting else f"{name}[{key!r}]"
    if value and (value in _VALUE_WORDS or re.fullmatch(r"[A-Z][A-Z_-]*", value) or re.search(r"[\d:=,|/\[]", value)):
        return f"{name}={_python_value(value)}"
    return name + (f" {value}" if value else "")


def in_python_terms(message: str) -> str:
    """A message of the shared code with its command-line options as OTClust's parameters:
    `--clusters must be` -> `n_clusters must be`, `use --device cpu` -> `use device='cpu'`,
    `--param rotation=false` -> `params={'rotation': False}`."""
    return _OPTION.sub(_python_option, _DOWNLOAD.sub("the command line's --download", message))


def _errors_in_python_terms(function):
    """The UserErrors a public method raises, worded with OTClust's parameters (same type, same traceback)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError as error:
            if error.args and isinstance(error.args[0], str):
                error.args = (in_python_terms(error.args[0]), *error.args[1:])
            raise

    return wrapper


def _plain_number(value):
    """numpy scalars as Python numbers: random.seed and others refuse numpy.int64."""
    return value.item() if isinstance(value, (np.integer, np.floating)) else value


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _checked_array(X) -> np.ndarray:
    """X as a dense, finite, numeric array of 2 to 4 dimensions in native byte order, or a one-line error."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu()
        if X.is_floating_point() and X.dtype not in (torch.float16, torch.float32, torch.float64):
            X = X.float()  # bfloat16 (and float8) have no numpy type: float32 holds them exactly
        X = X.numpy()
    if scipy.sparse.issparse(X):
        raise InputTypeError("X is a sparse matrix: pass a dense array (X.toarray()); sparse input is not supported")
    try:
        shape = np.shape(X)
    except ValueError:  # numpy refuses ragged nested lists here, with a message about 'inhomogeneous' parts
        raise InputValueError("X is a ragged list (its rows have different lengths): pass a rectangular array, every sample of the same shape") from None
    if len(shape) not in (2, 3, 4):
        raise InputValueError(f"X must be images (N,H,W), (N,H,W,C), (N,C,H,W) or features (N,D); got shape {shape}")
    try:
        # scikit-learn's own validation: object arrays of numbers become floats, complex or
        # non-numeric values, NaN, infinity and empty arrays are refused.
        array = check_array(X, dtype="numeric", allow_nd=True, ensure_min_samples=1, ensure_min_features=1, input_name="X")
    except TypeError as error:
        raise InputTypeError(_one_line(error)) from None
    except ValueError as error:
        raise InputValueError(_one_line(error)) from None
    if 0 in array.shape:  # scikit-learn checks N and D only; an empty image side crashes deep in the network
        raise InputValueError(f"X has shape {array.shape}, with a dimension of size 0: every image needs at least one pixel along each axis")
    if array.dtype.kind == "f" and array.dtype.itemsize > 8:
        # torch has no long double; float64 keeps every value that float32 (what trains) can hold.
        with np.errstate(over="ignore"):
            array = array.astype(np.float64)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))  # big-endian files: torch reads native order only
    if array.dtype.kind == "f":
        largest = max(abs(float(array.max())), abs(float(array.min())))  # no N x D copy as np.abs would make
        if not largest <= float(np.finfo(np.float32).max):
            # The network computes in float32, where these become infinite: training would stop
            # with outputs 'NaN or infinite', which reads like a learning-rate problem.
            raise InputValueError(f"X holds values up to {largest:g}, beyond float32's range (about 3.4e38) in which OTClust computes: rescale X (e.g. standardise each feature)")
    return array


# How float images are read: "0..1" (intensities, scaled by 255) or "0..255".
UNIT_RANGE, BYTE_RANGE = "0..1", "0..255"
# Float images whose values are almost all in [0, 1] but not all: [0, 1] intensities with a few
# values just above 1 (resampling overshoot) would be read as 0..255 and rounded to 0 or 1, which
# destroys them, while dark 0..255 images look the same; so such data are refused, not guessed.
AMBIGUOUS_UNIT_SHARE = 0.99


def _float_image_range(array: np.ndarray, high: float, fitted: str | None = None) -> str:
    """How float images in [0, 255] (`high` their largest value) are read: the range the
    estimator was fitted with (so that a dark batch is not read otherwise at predict time), else
    [0, 1] when every value is at most 1."""
    if fitted == UNIT_RANGE and high > 1.0:
        raise InputValueError(f"OTClust was fitted on float images in [0, 1], but X has values up to {high:g}: pass images on the same scale (divide 0..255 values by 255)")
    if fitted is not None:
        return fitted
    if high <= 1.0:
        return UNIT_RANGE
    share = float(np.mean(array <= 1.0))
    if share >= AMBIGUOUS_UNIT_SHARE:
        raise InputValueError(
            f"X holds float images with {share:.2%} of the values in [0, 1] but some up to {high:g}, so their scale is ambiguous: "
            "if they are intensities in [0, 1], clip them (np.clip(X, 0, 1)); if they are 0..255 values, pass them as bytes (np.rint(X).astype(np.uint8))"
        )
    return BYTE_RANGE


def _as_uint8_images(array: np.ndarray, fitted_range: str | None = None) -> tuple[np.ndarray, str | None]:
    """Image values as 8 bits, by the rules of the module docstring, and the float range read
    (None for integer and boolean images, whose scale is fixed)."""
    if array.dtype == np.uint8:
        return array, None
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255, None
    low, high = float(array.min()), float(array.max())
    if not (low >= 0.0 and high <= 255.0):
        raise InputValueError(
            f"X holds images with values in [{low:g}, {high:g}], but images must be 0..255 or float intensities in [0, 1]: "
            "pass standardised or other data as feature vectors (X.reshape(len(X), -1)), or rescale the images"
        )
    if array.dtype.kind != "f":
        return np.rint(array).astype(np.uint8), None
    value_range = _float_image_range(array, high, fitted_range)
    scale = 255.0 if value_range == UNIT_RANGE else 1.0
    return np.rint(array.astype(np.float64) * scale).astype(np.uint8), value_range


def _dataset_and_range(X, fitted_range: str | None = None, name: str = "array"):
    """(ImageDataset of X, the float image range read or None); `fitted_range`: the one to reuse."""
    array = _checked_array(X)
    if array.ndim == 2:
        return ImageDataset(data=torch.tensor(array, dtype=torch.float32), labels=None, name=name), None
    if array.ndim == 3:
        array = array[:, None]
    elif array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1] not in (1, 3):
        raise InputValueError(f"images must have 1 or 3 channels, got shape {array.shape}; pass other data as feature vectors (N, D)")
    array, value_range = _as_uint8_images(array, fitted_range)
    # A copy: the data may be a read-only memory map, and torch needs writable memory.
    return ImageDataset(data=torch.tensor(np.ascontiguousarray(array)), labels=None, name=name), value_range


def dataset_from_array(X, name: str = "array"):
    """X (see the module docstring for what its shapes and values mean) -> ImageDataset."""
    return _dataset_and_range(X, name=name)[0]


# scikit-learn estimator checks that do not apply to OTClust, and why (the test passes this to
# parametrize_with_checks; every other check must pass).
_ONE_CLUSTER = (
    "sets n_clusters=1: a partition into one cluster has nothing to learn, and OTClust refuses "
    "n_clusters < 2 (a ValueError) rather than train a network towards a constant answer"
)
SKLEARN_CHECKS_NOT_APPLICABLE = {
    "check_dont_overwrite_parameters": _ONE_CLUSTER,
    "check_methods_subset_invariance": _ONE_CLUSTER,
    "check_fit2d_1sample": _ONE_CLUSTER,
    "check_fit2d_1feature": _ONE_CLUSTER,
    "check_fit2d_predict1d": _ONE_CLUSTER,
}


class OTClust(ClusterMixin, BaseEstimator):
    """Deep clustering estimator: any otclust method behind fit / predict / fit_predict.

    Parameters mirror `otclust fit`: `epochs` or `steps` (optimizer steps, rounded up to whole
    epochs) set the training length, else it grows with the data (`otclust.budget`); `params`
    holds the method's hyper-parameters (e.g. {"sinkhorn_eps": 0.05} for CLOT). `n_clusters="auto"`
    (or "auto:MIN-MAX") trains with MAX clusters, chooses K after training and, with `refit=True`
    (the default), trains again with that K, as `fit --clusters auto` does. After fit, `labels_` holds the training samples' clusters, `n_clusters_` the K they use
    (with its curve, and the K as stable as the chosen one, in `k_selection_` under "auto"), and `n_features_in_` the D of feature vectors (images have no
    fixed D: new images of another size or colour mode are converted as the training data were);
    `float_image_range_` is "0..1" or "0..255" after fitting on float images (predict reads
    floats on that scale; `save` keeps it), else None.
    X is described in the module docstring: (N, D) feature vectors are used as given; images are
    uint8, 0..255, or floats in [0, 1]; anything else is refused with an `InputValueError` (a
    ValueError and a UserError), as are bad settings (a pretrained `backbone` or its `weights`
    file included). Using an unfitted estimator raises scikit-learn's `NotFittedError`.

    With a pretrained `backbone` (`timm:NAME`, `torchvision:NAME`, `otclust:RUN`), `weights` is its
    file; predict embeds new images with that network, from the file `weights` names when it
    exists (set it, or `OTClust.load(path, weights=NEW)`, when the file moved since fit), else the
    one fit recorded; a file with another sha256 is refused.

    What the run says: with `verbose=False` (the default) its progress (epoch lines, the default
    budget, the read-out's timing) is dropped, and each warning is issued as one
    `otclust.OTClustWarning` (a UserWarning: `warnings.filterwarnings` silences or raises them):
    the K range narrowed on a small set, K chosen at the floor of its range, `cluster_proportions`
    or `cpu_amp` not used, images resized or colour converted by predict to the model's input.
    With `verbose=True` both are printed on stderr as the command line prints them, warnings as
    `note: ` lines. Errors and warnings name OTClust's parameters (`n_clusters`, `device='cpu'`,
    `params={'rotation': False}`) where the command line's name its options (`in_python_terms`);
    progress lines are printed as the command line words them. Other libraries' warnings (a
    k-means that found fewer clusters than asked, a RuntimeWarning) come as those libraries
    issue them.

    scikit-learn's `check_estimator` passes (tests/test_estimator.py) except for the checks that
    set n_clusters=1, which OTClust refuses: check_dont_overwrite_parameters,
    check_methods_subset_invariance, check_fit2d_1sample, check_fit2d_1feature and
    check_fit2d_predict1d (`SKLEARN_CHECKS_NOT_APPLICABLE` gives the reason; a 1-D X is refused
    with a ValueError all the same).
    """

    def __init__(self, method="clot", n_clusters=10, epochs=None, steps=None, batch_size=None, lr=None, seed=0, device="auto", backbone="auto", cluster_proportions="uniform", params=None, augment=None, verbose=False, weights=None, cpu_amp=False, refit=True):
        self.method = method
        self.n_clusters = n_clusters
        self.epochs = epochs
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.device = device
        self.backbone = backbone
        self.cluster_proportions = cluster_proportions
        self.params = params
        self.augment = augment
        self.verbose = verbose
        self.weights = weights  # weights file of a pretrained backbone (timm:NAME, torchvision:NAME)
        self.cpu_amp = cpu_amp  # bfloat16 on a CPU that computes it natively (otclust.precision)
        self.refit = refit  # n_clusters='auto': train again with the chosen K (otclust.k_search)

    @_errors_in_python_terms
    def _config(self) -> FitConfig:
        for name in ("params", "augment"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), Mapping):
                raise InputTypeError(f"{name} must be a mapping of names to values (e.g. params={{'sinkhorn_eps': 0.05}}) or None, got {getattr(self, name)!r}")
        values = dict(get_method_class(self.method).default_config)
        values.update(method=self.method, data="array", clusters=_plain_number(self.n_clusters), seed=_plain_number(self.seed), device=self.device, backbone=self.backbone, cluster_proportions=self.cluster_proportions, params=dict(self.params or {}), augment=dict(self.augment or {}), weights=self.weights, cpu_amp=self.cpu_amp, refit=self.refit)
        proportions = self.cluster_proportions
        if isinstance(proportions, (list, tuple, np.ndarray)):  # sizes as numbers: the text the CLI takes
            values["cluster_proportions"] = ",".join(str(float(p)) for p in np.asarray(proportions, dtype=object).reshape(-1))
        if self.epochs is not None or self.steps is not None:  # either replaces the other from the method's defaults
            values.update(epochs=_plain_number(self.epochs), steps=_plain_number(self.steps))
        for key in ("batch_size", "lr"):
            if getattr(self, key) is not None:
                values[key] = _plain_number(getattr(self, key))
        with settings_errors_as_value_errors():
            return FitConfig(**values).validate()

    @_errors_in_python_terms
    def fit(self, X, y=None):
        """Train on X; y is ignored (present for scikit-learn pipelines)."""
        is_auto = isinstance(self.n_clusters, str) and self.n_clusters.strip().startswith("auto")
        if not is_auto and (isinstance(self.n_clusters, bool) or not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 2):
            raise InputValueError(f"n_clusters must be an integer of at least 2, or 'auto' / 'auto:MIN-MAX', got {self.n_clusters!r}")
        config = self._config()
        dataset, float_image_range = _dataset_and_range(X)
        config, narrowed = fit_default_k_range(config, dataset.n_samples)
        if narrowed:
            self._warn(narrowed)
        if config.k_range and largest_k(dataset.n_samples) < config.k_range[1]:
            raise InputValueError(f"n_clusters={config.clusters!r}: K can be chosen up to {largest_k(dataset.n_samples)} among n_samples={dataset.n_samples}: pass more samples or a smaller range")
        if dataset.n_samples < config.training_clusters:
            raise InputValueError(f"n_samples={dataset.n_samples} is fewer than the {config.training_clusters} clusters asked for (n_clusters={config.clusters}): pass more samples or ask for fewer clusters")
        neighbors = None
        with kept_global_random_state():
            if is_pretrained(config.backbone):  # frozen stage: X is embedded once (cached), the method trains on that
                with settings_errors_as_value_errors():  # backbone and weights are settings: a name, a file, a run not found or not fitting
                    dataset, _, neighbors = pretrained_training_data(config, dataset, progress=self.verbose, log=self._progress_log())
            with settings_errors_as_value_errors():  # method parameters are checked when the method is built
                trainer, result = fit_model(config, dataset, progress=self.verbose, log=self._progress_log(), input_neighbors=neighbors, warn=self._warn)
        self.model_ = result.method
        self.config_ = trainer.config
        self.labels_ = result.labels
        self.history_ = result.history
        self.n_clusters_ = int(result.metrics["clusters"])  # the K predicted: n_clusters, or the one chosen under 'auto'
        self.k_selection_ = result.metrics.get("k_selection")  # n_clusters='auto': the criterion's curve, else None
        # "0..1" or "0..255" for float images, else None: predict reads floats on this scale.
        self.float_image_range_ = float_image_range
        if dataset.is_features:
            self.n_features_in_ = int(dataset.data.shape[1])
        elif hasattr(self, "n_features_in_"):
            del self.n_features_in_  # a refit on images: no fixed number of features any more
        return self

    def _progress_log(self):
        """The engine's progress channel: printed under verbose (its default, None), else dropped."""
        return None if self.verbose else (lambda message: None)

    def _warn(self, message: str) -> None:
        """A warning of the run (the engine's `warn`, not its progress `log`): a `note: ` line on
        stderr among the progress lines under verbose, as the command line prints it, else an
        OTClustWarning, since silencing the progress must not hide it; in OTClust's terms either way."""
        if self.verbose:
            print(f"note: {in_python_terms(message)}", file=sys.stderr, flush=True)
        else:
            warnings.warn(in_python_terms(message), OTClustWarning, stacklevel=2)

    def _check_fitted(self):
        check_is_fitted(self, "model_", msg="This %(name)s instance is not fitted yet: call fit(X) or OTClust.load(path) first")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False  # a fixed seed gives the same clustering on the same device
        return tags

    @_errors_in_python_terms
    def predict_proba(self, X) -> np.ndarray:
        """N x K cluster probabilities of X (converted to what the model was trained on)."""
        self._check_fitted()
        dataset, _ = _dataset_and_range(X, getattr(self, "float_image_range_", None))
        if is_pretrained(self.config_.backbone) and not dataset.is_features:  # the same frozen backbone first
            weights = self._backbone_weights()
            with settings_errors_as_value_errors():
                dataset = features_for_model(self.config_, dataset, weights=weights, device=self.device, progress=self.verbose, log=self._progress_log())
        spec = self.model_.spec
        if not spec.is_features and (dataset.is_features or (dataset.channels, dataset.image_size) != (spec.channels, tuple(spec.image_size))):
            if dataset.is_features:
                raise InputValueError("the model was trained on images but X holds feature vectors (N, D): pass images")
            converted = conform(dataset, spec.channels, tuple(spec.image_size))
            for note in converted.notes[len(dataset.notes) :]:  # resized, colour converted: said, as predict on the command line does
                self._warn(note)
            dataset = converted
        elif spec.is_features and (not dataset.is_features or dataset.data.shape[1] != spec.feature_dim):
            found = f"X has {dataset.data.shape[1]} features" if dataset.is_features else "X holds images"
            raise InputValueError(f"{found}, but OTClust is expecting {spec.feature_dim} features as input")
        device = next(self.model_.parameters(), torch.empty(0)).device
        # Not the command line's advice (its --batch-size of predict): batch_size is the training
        # batch here, and predict takes 1024 samples at a time, fewer only when X holds fewer.
        advice = "predict X in parts of fewer than 1024 samples"
        return predict_in_batches(self.model_, dataset.data, device, batch_size=1024, memory_advice=advice)

    def _backbone_weights(self) -> str | None:
        """The weights file predict embeds new images with: `weights` (set after fit, or given to
        `load`) when it names an existing path, so that a file moved since fit can be given again;
        else the file fit resolved and recorded (`config_.weights`: absolute, so a relative
        `weights` still works from another directory). Either must have the sha256 fit recorded."""
        recorded = self.config_.weights
        for weights in (self.weights, recorded):
            if weights is not None and Path(weights).expanduser().exists():
                return str(weights)
        if recorded is None:
            return None  # the library's cache, looked up again
        # The command line's advice (--weights) has no meaning here: say how OTClust takes the file.
        given = "" if self.weights is None or Path(self.weights).expanduser().resolve() == Path(recorded) else f", nor at weights={str(self.weights)!r}"
        raise InputValueError(
            f"the weights file of {self.config_.backbone} this model was fitted with is not at {recorded}{given}: "
            "give its new path, OTClust.load(PATH, weights=NEW) or model.weights = NEW (its sha256 must be the one fit recorded)"
        )

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_

    def save(self, path) -> None:
        """Write a checkpoint that `OTClust.load` and `otclust predict --checkpoint` both read."""
        self._check_fitted()
        state = trained_state(self.model_, self.config_)
        state["estimator_params"] = to_plain(self.get_params(), "estimator parameters")
        state["labels"] = torch.as_tensor(np.asarray(self.labels_))
        # What fit leaves on the estimator besides the model, so that a loaded one has it too.
        state["estimator_fit"] = to_plain({"history": self.history_, "k_selection": self.k_selection_}, "the fit's history")
        state["float_image_range"] = getattr(self, "float_image_range_", None)
        write_checkpoint(state, path)

    @classmethod
    @_errors_in_python_terms
    def load(cls, path, device: str = "auto", weights=None) -> "OTClust":
        """Read a checkpoint (without running any code it may hold) into a fitted estimator.

        weights: for a model fitted behind a pretrained backbone, its weights file where it is now,
        if it moved since fit (its sha256 must be the one fit recorded); the same as setting
        `weights` on the loaded estimator."""
        checkpoint = read_checkpoint(path)
        method, config = load_trained(path, device=device)
        if "estimator_params" in checkpoint:
            known = set(cls._get_param_names())
            estimator = cls(**{**{k: v for k, v in checkpoint["estimator_params"].items() if k in known}, "device": device})
        else:
            estimator = cls(method=config.method, n_clusters=config.clusters, device=device)
        if weights is not None:
            estimator.weights = weights
        estimator.model_ = method
        estimator.config_ = config
        fitted = method.readout_fits.get(method.predictor)
        estimator.n_clusters_ = int(fitted.weight.shape[0]) if fitted is not None else int(method.n_clusters)
        if "labels" in checkpoint:
            estimator.labels_ = np.asarray(checkpoint["labels"])
        fit_record = checkpoint.get("estimator_fit") or {}
        estimator.history_ = list(fit_record.get("history") or [])
        estimator.k_selection_ = fit_record.get("k_selection")
        if method.spec.is_features:
            estimator.n_features_in_ = int(method.spec.feature_dim)
        # Checkpoints from before it was kept, or from `otclust fit`: guessed per call, as then.
        estimator.float_image_range_ = checkpoint.get("float_image_range")
        return estimator

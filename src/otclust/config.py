"""The settings of one training run: what the CLI, YAML files and the estimator all fill in.

Method hyper-parameters live in `params` and are checked against the method's own `Params`
dataclass when the method is built, so a typo fails at once with the list of valid names.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from otclust.choose_k import parse_clusters
from otclust.errors import UserError
from otclust.models import BACKBONES
from otclust.models.pretrained import is_pretrained
from otclust.readout.stage import check_readout_name


@dataclass
class FitConfig:
    method: str = "clot"
    data: str = "digits"
    split: str = "all"  # train and test joined, as the papers evaluate
    # K, or "auto" / "auto:MIN-MAX": the network trains with MAX clusters (over-clustering) and K
    # is chosen after training on the read-out's features (otclust.choose_k).
    clusters: int | str = 10
    # Under --clusters auto: train again from scratch with the chosen K (otclust.k_search).
    refit: bool = True
    # How long to train: epochs, or optimizer steps (rounded up to whole epochs); neither (None):
    # the default budget, which grows with the data (otclust.budget). budget_scale multiplies
    # that default (compare --epochs-scale sets it).
    epochs: int | None = None
    steps: int | None = None
    budget_scale: float = 1.0
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"  # cosine | constant
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    backbone: str = "auto"
    amp: bool = True  # mixed precision, used on CUDA only
    # bfloat16 mixed precision on the CPU (training steps, predictions, feature passes, the
    # coarse pass of brute-force neighbour searches); only where the CPU computes bfloat16 natively.
    cpu_amp: bool = False
    sync_batchnorm: bool = False  # several processes (torchrun): batch-norm statistics over the global batch (CUDA only)
    eval_every: int = 1
    cluster_proportions: str = "uniform"  # uniform | auto | comma-separated sizes | path to a file
    augment: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    # After training: head | kmeans | smoothed (otclust.readout); None: the method's default.
    readout: str | None = None
    readout_params: dict = field(default_factory=dict)  # the read-out's settings (ReadoutParams)
    download: bool = False
    image_size: int | None = None
    # A pretrained backbone (LIBRARY:NAME): its weights file and that file's sha256, which
    # predict checks before running new images through the same network.
    weights: str | None = None
    weights_sha256: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def k_range(self) -> tuple[int, int] | None:
        """(MIN, MAX) when K is chosen after training (--clusters auto), else None."""
        parsed = parse_clusters(self.clusters)
        return parsed if isinstance(parsed, tuple) else None

    @property
    def training_clusters(self) -> int:
        """The number of clusters the network trains with: K, or MAX of --clusters auto:MIN-MAX."""
        k_range = self.k_range
        return k_range[1] if k_range else int(self.clusters)

    def validate(self) -> "FitConfig":
        for name in MAPPING_FIELDS:
            check_mapping(name, getattr(self, name))
        # Keys only: their values depend on the images (checked when the augmentation is built),
        # and on feature vectors the settings were ignored without a word, a typo included.
        from otclust.data.augment import AUGMENT_SETTINGS  # torch: imported only once a config is checked

        unknown = sorted(set(self.augment or {}) - set(AUGMENT_SETTINGS))
        if unknown:
            raise UserError(f"unknown augmentation setting(s) {', '.join(map(str, unknown))}: use {', '.join(AUGMENT_SETTINGS)}")
        if isinstance(self.clusters, bool) or not isinstance(self.clusters, (numbers.Integral, str)):
            raise UserError(f"--clusters must be a number or 'auto', got {self.clusters!r}")
        parsed = parse_clusters(self.clusters)
        self.clusters = parsed if isinstance(parsed, int) else self.clusters.strip()
        if isinstance(self.clusters, int) and self.clusters < 2:
            raise UserError(f"--clusters must be at least 2, got {self.clusters}")
        if self.k_range:
            if self.readout == "head":
                raise UserError("--clusters auto chooses K on the network's features after training, which the head cannot do: drop --readout head (or use smoothed or kmeans)")
            if not str(self.cluster_proportions).startswith(("uniform", "auto", "p2ot")):
                raise UserError(f"--cluster-proportions {self.cluster_proportions} gives K sizes, so K is known: pass --clusters K instead of '{self.clusters}'")
        # Parsed here, not only when the method is built, so that compare and sweep refuse a bad
        # value before their first run instead of recording it as every run's failure.
        from otclust.ot.priors import parse_cluster_proportions  # torch: imported only once a config is checked

        parse_cluster_proportions(self.cluster_proportions, self.training_clusters)
        # Whole numbers: range() and the step arithmetic take no 1.5, and a '1' from a program
        # (not the CLI, which parses it) would fail comparing text with a number.
        if self.epochs is not None and (not _is_whole(self.epochs) or self.epochs < 1):
            raise UserError(f"--epochs must be at least 1, a whole number, got {self.epochs!r}")
        if self.steps is not None and (not _is_whole(self.steps) or self.steps < 1):
            raise UserError(f"--steps must be at least 1, a whole number, got {self.steps!r}")
        if self.epochs is not None and self.steps is not None:
            raise UserError(f"both epochs ({self.epochs}) and steps ({self.steps}) are set: give one of --epochs and --steps")
        if not _is_real(self.budget_scale) or not (math.isfinite(self.budget_scale) and self.budget_scale > 0):
            raise UserError(f"budget_scale must be a positive finite number, got {self.budget_scale!r}")
        if not _is_whole(self.batch_size) or self.batch_size < 2:
            raise UserError(f"--batch-size must be at least 2, a whole number, got {self.batch_size!r}")
        # Adam takes an infinite rate and steps to NaN weights; a NaN one it refuses with a traceback.
        if not _is_real(self.lr) or not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive finite number, got {self.lr!r}")
        if not _is_real(self.weight_decay) or not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"--weight-decay must be a finite number of 0 or more, got {self.weight_decay!r}")
        if not _is_whole(self.warmup_epochs) or self.warmup_epochs < 0:
            raise UserError(f"--warmup-epochs must be 0 or more, got {self.warmup_epochs!r}")
        # The epoch loop scores every eval_every-th epoch (a modulo): 0 divides by zero.
        if not _is_whole(self.eval_every) or self.eval_every < 1:
            raise UserError(f"--eval-every must be at least 1, got {self.eval_every!r}")
        # torch.manual_seed takes 64 bits; the methods add the epoch to the seed, so keep a bit spare.
        if not _is_whole(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed must be a whole number from 0 to {MAX_SEED} (2**63-1), got {self.seed!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise UserError(f"--lr-schedule must be cosine or constant, got '{self.lr_schedule}'")
        for name in ("amp", "cpu_amp", "refit"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_readout_name(self.readout)
        if self.split not in ("all", "train", "test", "unlabeled", "train+unlabeled"):
            raise UserError(f"--split must be all, train or test, got '{self.split}'")
        if self.backbone not in BACKBONES and not is_pretrained(self.backbone):
            raise UserError(f"unknown backbone '{self.backbone}': use one of {', '.join(BACKBONES)}, or a pretrained timm:NAME, torchvision:NAME, otclust:RUN/model.pt")
        if self.weights and not is_pretrained(self.backbone):
            raise UserError(f"--weights is for a pretrained backbone (timm:NAME, torchvision:NAME); --backbone is '{self.backbone}'")
        check_otclust_weights(self.backbone, self.weights)
        return self


def check_otclust_weights(backbone: str | None, weights: str | None) -> None:
    """An otclust:RUN backbone is its own weights file, so --weights beside it is a second name
    for that model: the extractor embeds with --weights while the run, the embedding cache and
    FILE.json are labelled RUN. Two different models are refused; the same file or a copy of it
    (a run's config.yaml records both) is accepted. For fit and embed only: predict's --weights
    (a moved model) is checked against the sha256 the run recorded instead."""
    if not (weights and isinstance(backbone, str) and backbone.startswith("otclust:")):
        return
    from otclust.models.pretrained import file_sha256

    def model_file(path: Path) -> Path:  # a run folder stands for its model.pt, as for the extractor
        return path / "model.pt" if path.is_dir() else path

    named, given = model_file(Path(backbone.partition(":")[2]).expanduser()), model_file(Path(weights).expanduser())
    if not given.is_file():
        return  # the extractor says it is not found
    if named.is_file() and (named.resolve() == given.resolve() or file_sha256(named) == file_sha256(given)):
        return
    missing = "" if named.is_file() else f" ({named} not found)"
    raise UserError(
        f"--backbone {backbone} and --weights {weights} are not the same model{missing}: an otclust backbone is its own "
        "weights file, so name it once, as --backbone otclust:RUN/model.pt, without --weights"
    )


CONFIG_FIELDS = {f.name for f in dataclasses.fields(FitConfig)}
MAX_SEED = 2**63 - 1
# Settings that hold KEY: VALUE pairs of their own (--param, --readout-param, --augment).
MAPPING_FIELDS = ("params", "readout_params", "augment")


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_mapping(name: str, value, where: str = "") -> None:
    """params, readout_params and augment are read key by key: anything but a mapping (or
    nothing) would fail deep inside with a TypeError."""
    if value is not None and not isinstance(value, dict):
        raise UserError(f"{name}{where} must be a mapping of KEY: VALUE lines (e.g. '{name}:' then '  key: 1' indented below it), got {value!r}")


class SettingsLoader(yaml.SafeLoader):
    """YAML's safe loader (no Python tags), reading 1e-3 as the number it looks like: YAML 1.1,
    which PyYAML follows, takes a float only with a dot (1.0e-3), so 'lr: 1e-3' was the text
    '1e-3' and refused as not a number."""


SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_settings(text: str):
    return yaml.load(text, Loader=SettingsLoader)  # noqa: S506 - SettingsLoader is a SafeLoader


def load_config_file(path: str | Path) -> dict:
    """Read a YAML file of FitConfig fields; unknown keys are an error, not silently ignored."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        values = read_settings(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"config file {path} is not UTF-8 text (byte {error.start} cannot be read): save it as UTF-8 YAML") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping of settings, e.g. 'epochs: 20'")
    unknown = sorted(set(values) - CONFIG_FIELDS)
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)} in {path}: valid ones are {', '.join(sorted(CONFIG_FIELDS))}")
    for name in MAPPING_FIELDS:
        check_mapping(name, values.get(name), f" in {path}")
    return values


def coerce_param(raw: str):
    """Turn the text of --param key=value into a number, bool, list or string, as YAML would."""
    try:
        return read_settings(raw)
    except yaml.YAMLError:
        return raw

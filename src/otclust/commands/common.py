"""Options and steps shared by the subcommands that train or load models."""

from __future__ import annotations

import argparse
import os

from otclust.budget import MAX_DEFAULT_EPOCHS, describe_default_budget
from otclust.config import FitConfig, coerce_param, load_config_file
from otclust.data import DATASET_NAMES
from otclust.data.datasets import absolute_spec
from otclust.data.augment import AUGMENT_SETTINGS
from otclust.data.decode import SETTINGS
from otclust.errors import UserError
from otclust.methods import METHOD_MODULES, get_method_class
from otclust.methods.base import override_params
from otclust.models import BACKBONES
from otclust.readout import READOUTS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it has a real one.

    Most options default to None so that a --config file can fill them in; their help text names
    the effective default itself, and argparse's "(default: None)" would contradict it.
    """

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_data_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    SETTINGS.__init__()  # each command line starts from the decoder's defaults (_DecodeSetting)

    parser.add_argument(
        "--data",
        default=None,
        required=required,
        metavar="NAME[:PATH]",
        help=f"data set: {', '.join(DATASET_NAMES)}; e.g. digits, fashion-mnist, cifar10:DIR, folder:DIR, features:X.npy (default: digits)",
    )
    parser.add_argument("--split", default=None, help="which part of the data: all (train and test joined, the papers' protocol; default), train, test")
    parser.add_argument("--download", action="store_true", default=None, help="download the data set (and a pretrained backbone's weights) if missing (needs a network)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="side of the square folder images are decoded to, each centre-cropped (default: their median shorter "
        "side, at most 64 for the small CNN, 96 for the ResNets, and for a pretrained backbone the side its library's "
        "preprocessing resizes to, e.g. 235 for timm:resnet18); other data sets are resized to it",
    )
    parser.add_argument("--workers", type=int, default=None, action=_DecodeSetting, help="processes that decode folder images (default: one per CPU core, at most 8)")
    parser.add_argument("--no-cache", dest="cache", nargs=0, default=None, action=_DecodeSetting, help="decode folder images again instead of reusing (and writing) the decoded-image cache")
    parser.add_argument("--cache-dir", default=None, action=_DecodeSetting, metavar="DIR", help="where decoded folder images are cached (default: $OTCLUST_CACHE, else ~/.cache/otclust/decoded)")
    parser.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        action=_DecodeSetting,
        metavar="GB",
        help="RAM the decoded images may take; a larger folder is trained from the memory-mapped cache file, batch by batch (default: half the memory available)",
    )


class _DecodeSetting(argparse.Action):
    """Stores the option and sets it process-wide for the folder decoder (otclust.data.decode),
    so that every command that loads a folder honours it without passing it along."""

    def __call__(self, parser, namespace, values, option_string=None):
        if self.dest == "cache":
            values = False
        elif self.dest == "workers" and values < 1:
            raise argparse.ArgumentError(self, "must be at least 1")
        elif self.dest == "memory_budget":
            if not values > 0:
                raise argparse.ArgumentError(self, "must be a positive number of GB")
            values = values * 1e9
        setattr(namespace, self.dest, values)
        setattr(SETTINGS, self.dest, values)


def method_defaults(field: str) -> str:
    """'default: 256; 64 for deepcluster, deepercluster; ...' from each method's default_config,
    so the help of an option that some methods override names every effective default."""
    import dataclasses

    base = {f.name: f.default for f in dataclasses.fields(FitConfig)}[field]
    others: dict = {}
    for name in METHOD_MODULES:
        try:
            method = get_method_class(name)
        except UserError:  # a method missing from this installation
            continue
        value = method.default_config.get(field, base)
        if method.trainable and value != base:
            others.setdefault(value, []).append(name)

    def show(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    return "; ".join([f"default: {show(base)}", *(f"{show(value)} for {', '.join(names)}" for value, names in others.items())])


def add_readout_option(parser: argparse.ArgumentParser) -> None:
    """predict and evaluate: which of a checkpoint's predictors assigns the clusters."""
    parser.add_argument(
        "--readout",
        default=None,
        choices=list(READOUTS),
        help="which fitted predictor assigns the clusters: head, or a read-out saved in the checkpoint (default: the run's own, see its metrics.json 'predictor')",
    )


def add_weights_option(parser: argparse.ArgumentParser) -> None:
    """predict, evaluate and report: the weights of the pretrained backbone a model was fitted behind,
    for when the file is no longer where the model recorded it."""
    parser.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help="a model fitted behind a pretrained backbone: its weights file, if no longer where the model recorded it (its sha256 must match)",
    )


def add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML file of settings (see configs/); flags given on the command line win")
    parser.add_argument("--method", default=None, choices=list(METHOD_MODULES), help="clustering method (default: clot)")
    add_data_options(parser)
    parser.add_argument(
        "--clusters",
        "-k",
        default=None,
        metavar="K|auto|auto:MIN-MAX",
        help="number of clusters K (default: 10); auto (K in 2-15) or auto:MIN-MAX: a search run trains the network with MAX clusters and "
        "chooses K without labels by the stability of k-means partitions of its read-out's features (metrics.json 'k_selection' holds the curve; "
        "docs/results.md section 5 says how often it finds the true K), then the network trains again from scratch with the chosen K "
        "(the search run is kept in OUT/k-search/; --no-refit skips this)",
    )
    parser.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        default=None,
        help="--clusters auto: keep the search run (trained with MAX clusters, read out at the chosen K) instead of training again with the chosen K, which takes as long again",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default: a budget that grows with the number of samples N, about 30 sqrt(N) steps of 256 "
        f"samples, the same samples seen at any batch size, at least 500 such steps and at most {MAX_DEFAULT_EPOCHS:,} epochs: {describe_default_budget()}; CLOT on a pretrained --backbone's "
        f"embeddings a tenth of that, at least 500 steps: {describe_default_budget(short=True)}; a --config recipe may set epochs)",
    )
    parser.add_argument("--steps", type=int, default=None, help="train for at least this many optimizer steps, rounded up to whole epochs, instead of --epochs")
    parser.add_argument("--batch-size", type=int, default=None, help=f"images per step ({method_defaults('batch_size')})")
    parser.add_argument("--lr", type=float, default=None, help=f"Adam learning rate ({method_defaults('lr')})")
    parser.add_argument("--weight-decay", type=float, default=None, help=f"Adam weight decay ({method_defaults('weight_decay')})")
    parser.add_argument("--lr-schedule", default=None, choices=["cosine", "constant"], help=f"learning-rate schedule ({method_defaults('lr_schedule')})")
    parser.add_argument("--warmup-epochs", type=int, default=None, help=f"linear warm-up epochs ({method_defaults('warmup_epochs')})")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    parser.add_argument("--device", default=None, help="auto (default: CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument(
        "--backbone",
        default=None,
        metavar="|".join(BACKBONES) + "|LIBRARY:NAME",
        help="network: small-cnn (CPU-friendly), pooled-cnn (the same, pooled: objects anywhere in a photo), resnet18/34 (GPU), mlp (feature vectors); auto picks. Or a frozen pretrained "
        "extractor, timm:NAME, torchvision:NAME or otclust:RUN/model.pt: the data are embedded once (cached) and the method "
        "trains on the embeddings (docs/pretrained.md)",
    )
    parser.add_argument("--weights", default=None, metavar="PATH", help="weights file of a pretrained --backbone (default: the library's local cache; --download fetches them); an otclust:RUN backbone is its own model file, and --weights may only name that same model")
    parser.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="disable mixed precision on CUDA")
    parser.add_argument(
        "--cpu-amp",
        dest="cpu_amp",
        action="store_true",
        default=None,
        help="bfloat16 mixed precision on the CPU: about 1.4x faster steps where the CPU has AVX512-BF16 or AMX "
        "(elsewhere a note, and float32); results differ slightly from float32 runs (docs/performance.md)",
    )
    parser.add_argument(
        "--sync-batchnorm",
        action="store_true",
        default=None,
        help="with several processes (torchrun): batch-norm statistics over the global batch instead of each process's share (SyncBatchNorm; CUDA GPUs only)",
    )
    parser.add_argument("--eval-every", type=int, default=None, help="score the clustering every N epochs (default: 1)")
    parser.add_argument(
        "--cluster-proportions",
        default=None,
        metavar="uniform|auto[:TAU]|p2ot[:TAU]|auto:p2ot[:TAU]|P1,P2,..|FILE",
        help="cluster sizes for the OT constraint: uniform (default), auto (estimated while training; auto:TAU also "
        "relaxes the constraint into a KL penalty of strength TAU, e.g. auto:1: unbalanced OT for CLOT, SwAV and SeLa; p2ot[:TAU]: progressive partial OT as in P2OT, "
        "the sizes KL-relaxed towards equal ones and the labelled share of the mass ramped from 10%% to 100%% over training; auto:p2ot[:TAU]: the same, "
        "relaxed towards the estimated sizes), or known sizes (any order)",
    )
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a method hyper-parameter, e.g. --param sinkhorn_eps=0.05 (repeatable)")
    parser.add_argument(
        "--readout",
        default=None,
        choices=list(READOUTS),
        help="how clusters are read off after training: head (the method's own prediction), kmeans (k-means on the "
        "network's features), smoothed (k-means on features averaged over nearest neighbours, then a linear read-out); "
        "default: smoothed for every trained method, head for the k-means baseline. The final scores name both head and read-out",
    )
    parser.add_argument("--readout-param", action="append", default=[], metavar="KEY=VALUE", help="a read-out setting: neighbors, rounds, restarts, choice (prior|inertia), head_start (true|false: also a k-means run from the head's clusters; off by default), k_criterion (how --clusters auto chooses K: stability|eigengap|silhouette|calinski_harabasz|davies_bouldin), auto_min_excess (under --cluster-proportions auto: keep equal sizes unless they cost this much more than free k-means, e.g. 0.3; 0, the default: always estimate); e.g. --readout-param restarts=10")
    parser.add_argument("--augment", action="append", default=[], metavar="KEY=VALUE", help="an augmentation setting, e.g. --augment rotation_degrees=15 (repeatable); settings: "
                        + ", ".join(AUGMENT_SETTINGS) + " (otclust.data.augment.AugmentConfig says what each does)")


def _parse_pairs(pairs: list[str], flag: str) -> dict:
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} expects KEY=VALUE, got '{pair}'")
        values[key.strip().replace("-", "_")] = coerce_param(raw)
    return values


def config_from_args(args: argparse.Namespace) -> FitConfig:
    """Defaults < the method's own defaults < --config file < flags given on the command line."""
    file_values = load_config_file(args.config) if getattr(args, "config", None) else {}
    method_name = args.method or file_values.get("method") or FitConfig.method
    values = dict(get_method_class(method_name).default_config)
    values.update(file_values)
    values["method"] = method_name
    # --epochs and --steps say the same thing two ways: the one given on the command line replaces
    # the other from the config file or the method's defaults (both on the command line: an error).
    if getattr(args, "epochs", None) is not None:
        values.pop("steps", None)
    if getattr(args, "steps", None) is not None:
        values.pop("epochs", None)
    for field in ("data", "split", "clusters", "refit", "epochs", "steps", "batch_size", "lr", "weight_decay", "lr_schedule", "warmup_epochs", "seed", "device", "backbone", "amp", "cpu_amp", "sync_batchnorm", "eval_every", "cluster_proportions", "download", "image_size", "weights", "readout"):
        value = getattr(args, field, None)
        if value is not None:
            values[field] = value
    # A --param replaces the file's value of that parameter under any of its names (lam, sinkhorn_eps).
    values["params"] = override_params(get_method_class(method_name).Params, values.get("params") or {}, _parse_pairs(args.param, "--param"))
    readout_params = dict(values.get("readout_params") or {})
    readout_params.update(_parse_pairs(getattr(args, "readout_param", None) or [], "--readout-param"))
    values["readout_params"] = readout_params
    augment = dict(values.get("augment") or {})
    augment.update(_parse_pairs(args.augment, "--augment"))
    values["augment"] = augment
    # The run folder's config.yaml must name the same files from any working directory.
    if isinstance(values.get("data"), str):
        values["data"] = absolute_spec(values["data"])
    if isinstance(values.get("weights"), str) and values["weights"]:
        values["weights"] = os.path.abspath(os.path.expanduser(values["weights"]))
    return FitConfig(**values).validate()

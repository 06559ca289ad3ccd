"""The training engine every method plugs into.

One training step: the engine takes a shuffled batch of raw data already on the device, the
method turns it into views and losses (`training_step`), the engine back-propagates (with AMP
on CUDA), steps the optimizer and the learning-rate schedule. After each epoch it predicts the
whole evaluation set, scores it when labels exist (labels are never seen by the method) and
appends a row to the history; the history and an atomic checkpoint are written after the first
epoch, then at most every CHECKPOINT_EVERY_SECONDS (or every epoch, if epochs are longer), and
after the last.

Launched by `torchrun` (several processes, usually one per GPU), the same loop is data parallel:
every process holds the whole training set and draws the same permutation each epoch, and takes
its slice of each global batch of --batch-size samples; the method runs wrapped in
DistributedDataParallel (gradients averaged over processes); predictions are split over the
processes and gathered; only rank 0 computes metrics, logs, shows progress bars and writes the
run folder. Without torchrun nothing of this is active and a run is exactly what it was before.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from otclust import allocator, budget
from otclust import distributed as dist_utils
from otclust.distributed import select_device  # noqa: F401 - kept importable from the engine
from otclust.checkpoint import CHECKPOINT_FORMAT, capture_rng_state, read_checkpoint, restore_rng_state, to_plain, trained_state, write_checkpoint
from otclust.choose_k import K_CRITERION_TEXT, largest_k
from otclust.config import FitConfig
from otclust.data import decode
from otclust.data.datasets import absolute_spec, place_for_training, prefetch_to_device
from otclust.errors import UserError, memory_guard
from otclust.methods import ClusteringMethod, InputSpec, get_method_class
from otclust.methods.base import build_params, current_param_names
from otclust.metrics import evaluate_clustering
from otclust.models.backbones import build_backbone
from otclust.models.pretrained import is_pretrained
from otclust.ot.priors import parse_cluster_proportions, partial_transport, size_penalty
from otclust.precision import resolve_precision
from otclust.readout import SHARED_READOUT, fit_method_readout, install_readout, resolve_readout
from otclust.runs import RunWriter

# Re-exported: other modules import the checkpoint functions from here.
__all__ = ["CHECKPOINT_FORMAT", "Trainer", "load_trained", "read_checkpoint", "trained_state"]

# What to lower when the fit's own whole-data passes (evaluation, embedding) run out of memory:
# they go 1024 samples at a time, which only the images' size and the device decide about.
FIT_PASS_MEMORY_ADVICE = "use a smaller --image-size, or --device cpu when the GPU is the one that is full"
# The end-of-fit read-out (otclust.readout): k-means restarts on neighbour-smoothed features.
READOUT_MEMORY_ADVICE = "lower --readout-param restarts=N or --readout-param neighbors=N, or predict with the head (--readout head)"
# During training the run folder's checkpoint and metrics.jsonl are rewritten (atomically, with
# fsync) after the first epoch, then after the first epoch to end at least this long after the
# last write, and after the last epoch: on a small set an epoch takes a few milliseconds, and
# writing both after each one took a large share of the run (docs/performance.md). An
# interrupted run loses this much training, or one epoch, at most, to --resume.
CHECKPOINT_EVERY_SECONDS = 30.0


def prediction_memory_advice(batch_size: int) -> str:
    return f"lower the batch size (now {batch_size}: --batch-size of predict, evaluate and report)"


def same_data(saved: str | None, current: str) -> bool:
    """Whether a checkpoint's data spec names the data of this run: runs made before fit stored
    absolute paths (otclust.data.datasets.absolute_spec) may hold a relative one."""
    if saved == current:
        return True
    try:
        return absolute_spec(saved) == absolute_spec(current)
    except (UserError, TypeError):
        return False


@contextlib.contextmanager
def kept_global_random_state():
    """Python's, numpy's and torch's global generators as they were before the block: a fit seeds
    them (seed_everything) for its reproducibility, and a library call must not reseed its
    caller's generators, as scikit-learn's estimators never do."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_cluster_count(config: FitConfig, n_samples: int) -> None:
    """--clusters against the number of samples, before anything is said or built."""
    k = config.training_clusters
    if config.k_range and largest_k(n_samples) < config.k_range[0]:
        raise UserError(f"--clusters {config.clusters}: {n_samples} samples are too few to choose K among them: give K (--clusters K)")
    if config.k_range and k > largest_k(n_samples):
        raise UserError(f"--clusters {config.clusters}: K can be chosen up to {largest_k(n_samples)} among {n_samples} samples: pass --clusters auto:2-{largest_k(n_samples)} or less")
    if n_samples < k:
        raise UserError(f"--clusters {config.clusters} is more than the {n_samples} samples: choose fewer clusters")


def training_memory_bytes(backbone: str, channels: int, image_size: tuple[int, int], batch_size: int, views: int = 2) -> int:
    """Bytes a training step of the image backbone needs at the least, from shapes alone (meta
    tensors: nothing is allocated): its weights with their gradients and Adam's two moments, and
    each layer's output for `views` views of a batch, kept for the backward pass, with its
    gradient. Heads, losses and the data come on top: a lower bound, so that it never refuses a
    run that would fit."""
    sizes: list[int] = []
    with torch.device("meta"):
        network = build_backbone(backbone, channels, image_size, None)
        for module in network.modules():
            if not list(module.children()):
                module.register_forward_hook(lambda module, inputs, output: sizes.append(output.numel()))
        network(torch.empty(2, channels, *image_size))  # two samples: BatchNorm1d needs more than one
    parameters = sum(p.numel() for p in network.parameters())
    per_sample = sum(sizes) / 2
    return int(4 * (4 * parameters + 2 * views * batch_size * per_sample))


def check_training_memory(config: FitConfig, dataset, device: torch.device) -> None:
    """Refuse, before anything is built, a CPU run whose network alone would not fit in memory:
    there the kernel ends the process without a word (on CUDA an out-of-memory error is raised and
    memory_guard words it). The small CNN's last layer grows with the image's area, so a large
    --image-size meant tens of GB before the first step."""
    if device.type != "cpu" or dataset.is_features or is_pretrained(config.backbone):
        return
    batch = min(config.batch_size, dataset.n_samples)
    need = training_memory_bytes(config.backbone, dataset.channels, dataset.image_size, batch)
    available = decode.available_memory()
    if need > available:
        height, width = dataset.image_size
        raise UserError(
            f"training on {height}x{width} images in batches of {batch} needs at least {decode.format_bytes(need)} of memory "
            f"(the network's weights and activations), more than the {decode.format_bytes(available)} available: "
            f"lower --image-size (the default backbone is built for about {decode.BACKBONE_SIDE[decode.DEFAULT_BACKBONE]} px) or --batch-size"
        )


def build_method(config: FitConfig, spec: InputSpec) -> ClusteringMethod:
    method_class = get_method_class(config.method)
    params = build_params(method_class.Params, config.params, config.method)
    k = config.training_clusters
    check_cluster_count(config, spec.n_samples)
    method = method_class(k, spec, params, backbone=config.backbone, augment=config.augment)
    mode, sizes = parse_cluster_proportions(config.cluster_proportions, k)
    method.set_cluster_prior(mode, sizes, size_penalty(config.cluster_proportions), partial_tau=partial_transport(config.cluster_proportions))
    return method


def iterate_batches(
    data: torch.Tensor,
    batch_size: int,
    shuffle: bool,
    drop_last: bool = False,
    order: torch.Tensor | None = None,
    rank: int = 0,
    world_size: int = 1,
):
    """Yields (batch, indices) from a tensor; shuffling happens on the tensor's own device.

    `order` (indices, possibly repeating) replaces the shuffle when a method picks its samples.
    With `world_size` > 1, each batch of `batch_size` (the global batch, a multiple of
    world_size) is cut into world_size equal slices and this yields slice `rank` of each: the
    processes must pass the same `order`.
    """
    if order is None:
        n = len(data)
        order = torch.randperm(n, device=data.device) if shuffle else torch.arange(n, device=data.device)
    else:
        order = order.to(data.device)
        n = len(order)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    share = batch_size // world_size
    for start in range(0, stop, batch_size):
        indices = order[start : start + batch_size]
        if world_size > 1:
            indices = indices[rank * share : (rank + 1) * share]
        yield data[indices], indices


@torch.no_grad()
def predict_in_batches(method, data, device, batch_size=1024, use_amp=False, description=None, memory_advice: str | None = None) -> np.ndarray:
    """N x K cluster probabilities of a whole tensor, batch by batch, in eval mode."""
    was_training = method.training
    method.eval()
    chunks = []
    batches = iterate_batches(data, batch_size, shuffle=False)
    if description:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=math.ceil(len(data) / batch_size), desc=description, leave=False, file=sys.stderr, disable=None)
    with memory_guard("predicting", memory_advice or prediction_memory_advice(batch_size)):
        for batch, _ in batches:
            with torch.autocast(device.type, enabled=use_amp):
                chunks.append(method.predict_proba(batch.to(device)).float().cpu())
        method.train(was_training)
        return torch.cat(chunks).numpy()


@torch.no_grad()
def embed_in_batches(method, data, device, batch_size=1024, memory_advice: str | None = None, use_amp: bool = False) -> np.ndarray:
    was_training = method.training
    method.eval()
    with memory_guard("computing features", memory_advice or prediction_memory_advice(batch_size)), torch.autocast(device.type, enabled=use_amp):
        chunks = [method.embed_batch(batch.to(device)).cpu() for batch, _ in iterate_batches(data, batch_size, shuffle=False)]
        method.train(was_training)
        return torch.cat(chunks).numpy()


@dataclass
class FitResult:
    method: ClusteringMethod
    proba: np.ndarray  # N x K cluster probabilities of the evaluation data
    labels: np.ndarray  # argmax cluster per sample
    metrics: dict  # final: acc/nmi/ari when labels exist, seconds, epochs
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Runs a method on a dataset. `out_dir` None keeps everything in memory (the Python API)."""

    def __init__(self, config: FitConfig, out_dir: Path | None = None, progress: bool = True, log=None, warn=None):
        self.config = config.validate()
        # Under torchrun this joins the process group; each process gets its GPU (cuda:LOCAL_RANK).
        self.device = dist_utils.init_from_env(config.device)
        self.distributed = dist_utils.is_initialized()
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        self.is_main = self.rank == 0
        self.run_folder = Path(out_dir) if out_dir is not None else None
        # Only rank 0 writes the run folder, logs and shows progress bars.
        self.out = RunWriter(out_dir) if out_dir is not None and self.is_main else None
        self.progress = progress and self.is_main
        log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        # Two channels: `log` for progress, `warn` for what the user must see even when progress
        # is silenced (a setting not used, a weak K); the Python API turns the latter into
        # warnings. By default a warning is a `note: ` line of the log, as the command line shows it.
        warn = warn or (lambda message: log(f"note: {message}"))
        self.log = log if self.is_main else (lambda message: None)
        self.warn = warn if self.is_main else (lambda message: None)
        self.precision = resolve_precision(config.amp, config.cpu_amp, self.device, self.warn)
        self.use_amp = self.precision.autocast
        self.method: ClusteringMethod | None = None
        # What the training step calls: the method itself, or its DistributedDataParallel wrapper.
        self.model: torch.nn.Module | None = None
        self.train_data: torch.Tensor | None = None  # the training set, on the device
        # The run's length, fixed when fit knows N (`_resolve_budget`): methods schedule within it.
        self.steps_per_epoch: int | None = None
        self.total_steps: int | None = None
        # N x k nearest neighbours of the training inputs when already known (a pretrained
        # backbone's cached kNN graph), for methods that pair samples with neighbours.
        self.input_neighbors: torch.Tensor | None = None
        self.predictor: str | None = None  # the run's predictor and read-out settings (otclust.readout)
        self.readout_params = None
        self.checkpoint_every_seconds = CHECKPOINT_EVERY_SECONDS
        self.data_notes_shown = False  # the data set's notes, already printed (a --clusters auto refit)
        self.checkpoint_epoch = 0  # the epoch whose end the run folder's model.pt holds (0: none yet)
        self.current_epoch: int | None = None  # the epoch running (0-based), for the divergence message

    def iterate_batches(self, data: torch.Tensor, batch_size: int, shuffle: bool, drop_last: bool = False):
        return iterate_batches(data, batch_size, shuffle, drop_last)

    def predict_proba(self, data: torch.Tensor, batch_size: int = 1024, description: str | None = None) -> np.ndarray:
        proba = predict_in_batches(self.method, data, self.device, batch_size, self.use_amp, description if self.progress else None, FIT_PASS_MEMORY_ADVICE)
        return self._check_finite(proba, "cluster probabilities")

    def embed(self, data: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        features = embed_in_batches(self.method, data, self.device, batch_size, FIT_PASS_MEMORY_ADVICE, self.use_amp)
        return self._check_finite(features, "features")

    def _check_finite(self, values: np.ndarray, what: str) -> np.ndarray:
        """The whole-data passes of a fit (evaluation, the methods' k-means, the read-out): a
        network that diverged can keep a finite loss to the last step and then give NaN or inf
        outputs, which scikit-learn refused with a paragraph-long traceback at the read-out,
        after metrics.jsonl had recorded NaN scores."""
        if self.method is None or not self.method.trainable or np.isfinite(values).all():
            return values
        when = f"in epoch {self.current_epoch + 1}" if self.current_epoch is not None else "after the last epoch"
        raise UserError(self._diverged_message(f"the network's {what} became NaN or infinite {when} (training diverged) and the fit stopped", mid_epoch=False))

    # --- the loop -------------------------------------------------------------------------
    def fit(self, dataset, eval_dataset=None, resume: bool = False) -> FitResult:
        check_cluster_count(self.config, dataset.n_samples)  # before the budget's note
        check_training_memory(self.config, dataset, self.device)
        # Likewise an unknown or mistyped --param (build_method reads them again, with any warning).
        build_params(get_method_class(self.config.method).Params, self.config.params, self.config.method, warn=False)
        self.config = config = self._resolve_budget(dataset.n_samples, dataset.is_features)
        eval_dataset = eval_dataset or dataset
        seed_everything(config.seed)
        spec = InputSpec.from_dataset(dataset)
        checkpoint = self._load_own_checkpoint() if resume else None
        if checkpoint is not None:
            spec = InputSpec(**checkpoint["spec"])
        self.method = method = build_method(config, spec).to(self.device)
        # The read-out fitted after training: its settings fail here, before any training.
        self.predictor, self.readout_params = resolve_readout(config, method)
        if config.k_range and self.predictor == "head":
            raise UserError(f"--clusters {config.clusters} chooses K on features after training, and {config.method} predicts by its head by default: add --readout kmeans")
        if self.distributed:
            self.method = method = self._prepare_distributed(method, dataset.n_samples)
        # An out-of-core set stays memory-mapped; its batches go to the device one at a time.
        self.out_of_core = bool(getattr(dataset, "out_of_core", False))
        self.train_data = place_for_training(dataset, self.device)
        eval_data = place_for_training(eval_dataset, self.device) if eval_dataset is not dataset else self.train_data
        history: list[dict] = []
        start_epoch = 0
        seconds_before = 0.0
        optimizer = scheduler = None
        if method.trainable:
            optimizer = torch.optim.Adam(method.parameter_groups(), lr=config.lr, weight_decay=config.weight_decay)
            scheduler = self._make_scheduler(optimizer, dataset.n_samples)
        if checkpoint is not None:
            method.load_state_dict(checkpoint["model"])
            restore_method_state(method, checkpoint)
            if optimizer is not None:
                optimizer.load_state_dict(checkpoint["optimizer"])
                scheduler.load_state_dict(checkpoint["scheduler"])
            history = checkpoint["history"]
            start_epoch = self.checkpoint_epoch = checkpoint["epoch"]
            seconds_before = checkpoint.get("seconds", 0.0)
            restore_rng_state(checkpoint["rng"])
            self.log(f"resuming from epoch {start_epoch} of {config.epochs}")
        self.model = self._wrap_for_training(method)
        if self.out is not None:
            self.out.write_config(config.to_dict())
        for note in [] if self.data_notes_shown else dataset.notes:
            self.log(f"note: {note}")

        started = time.perf_counter()
        if not method.trainable:
            method.fit_without_training(self)
            history = []
        else:
            scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.grad_scaler)
            try:
                method.on_fit_start(self)
                saved = time.perf_counter()
                for epoch in range(start_epoch, config.epochs):
                    self.current_epoch = epoch
                    epoch_started = time.perf_counter()
                    method.train()
                    self._seed_shared(epoch)
                    method.on_epoch_start(self, epoch)
                    losses = self._train_one_epoch(epoch, optimizer, scheduler, scaler)
                    self._sync_after_epoch(epoch)
                    method.on_epoch_end(self, epoch, losses)
                    row = {"epoch": epoch + 1, **{f"loss_{k}" if k != "loss" else k: v for k, v in losses.items()}, "lr": optimizer.param_groups[0]["lr"]}
                    last = epoch + 1 == config.epochs
                    if (epoch + 1) % config.eval_every == 0 or last:
                        proba = self._predict_eval(eval_data)
                        if self.is_main:
                            row.update(_describe(proba, eval_dataset.labels))
                    row["seconds"] = round(time.perf_counter() - epoch_started, 3)
                    history.append(row)
                    self.log(_format_row(row, config.epochs))
                    if self.out is not None and (last or epoch == start_epoch or time.perf_counter() - saved >= self.checkpoint_every_seconds):
                        self.out.write_history(history)
                        self._save_checkpoint(epoch + 1, optimizer, scheduler, history, seconds_before + time.perf_counter() - started)
                        saved, self.checkpoint_epoch = time.perf_counter(), epoch + 1
                self.current_epoch = None
            finally:
                # Also when training raises (interrupted, out of memory): the Python API's caller
                # keeps the process, and must not keep training's malloc settings with it.
                allocator.hand_back_freed_blocks()
            with memory_guard("fitting the end-of-training read-out", READOUT_MEMORY_ADVICE):
                method.on_fit_end(self)
        with memory_guard("fitting the end-of-training read-out", READOUT_MEMORY_ADVICE):
            head_proba, readout_proba, readout_name, k_selection = self._read_out(method, eval_data, eval_dataset.labels is not None)
        seconds = seconds_before + time.perf_counter() - started
        if self.out is not None:
            self._save_checkpoint(config.epochs if method.trainable else 0, optimizer, scheduler, history, seconds)
        proba = head_proba if method.predictor == "head" else readout_proba
        labels = proba.argmax(axis=1)
        clusters = k_selection["chosen"] if k_selection else config.clusters
        metrics = {"method": config.method, "data": config.data, "clusters": clusters, "epochs": config.epochs, "seed": config.seed, "n_samples": int(len(proba))}
        if k_selection:
            metrics["k_selection"] = k_selection
        if self.is_main:
            metrics["predictor"] = method.predictor
            if eval_dataset.labels is not None:
                metrics.update(evaluate_clustering(eval_dataset.labels, labels))
                metrics["head"] = _final_scores(head_proba, eval_dataset.labels)
                if readout_proba is not None:
                    metrics["readout"] = {"name": readout_name, **_final_scores(readout_proba, eval_dataset.labels)}
            else:
                metrics["note"] = "no labels: ACC/NMI/ARI not computed"
            metrics["nonempty_clusters"] = int(len(np.unique(labels)))
            metrics["seconds"] = round(seconds, 2)
        if self.distributed:
            # Every process returns rank 0's metrics and history (computed there only).
            metrics, history = dist_utils.broadcast_object((metrics, history))
        if self.out is not None:
            self.out.write_final_metrics(metrics)
            self.out.write_assignments(proba, eval_dataset.labels, eval_dataset.paths, getattr(eval_dataset, "class_names", None))
        dist_utils.barrier()  # the run folder is complete when fit returns, on every process
        return FitResult(method=method, proba=proba, labels=labels, metrics=metrics, history=history)

    # --- the read-out stage -------------------------------------------------------------------
    def _read_out(self, method: ClusteringMethod, eval_data: torch.Tensor, scored: bool):
        """After training: the head's predictions, and the read-out's (otclust.readout).

        The run's predictor (--readout, else the method's default) is fitted and installed on the
        method; when it is the head and the evaluation data have labels, the shared read-out is
        fitted too, so that the final metrics always score both from the same network. Under
        --clusters auto the read-out chooses K first (the head keeps the training K).
        Returns (head probabilities, read-out probabilities or None, read-out name, K choice or None)."""
        amp, self.use_amp = self.use_amp, self.precision.readout_autocast
        try:
            return self._read_out_with(method, eval_data, scored)
        finally:
            self.use_amp = amp

    def _read_out_with(self, method: ClusteringMethod, eval_data: torch.Tensor, scored: bool):
        predictor, params, k_range = self.predictor, self.readout_params, self.config.k_range
        method.readout_fits, method.predictor = {}, "head"
        head_proba = self._predict_eval(eval_data, description="predicting")
        name = predictor if predictor != "head" else SHARED_READOUT
        if predictor == "head" and not scored:
            return head_proba, None, name, None
        if k_range:  # a head predictor with --clusters auto was refused before training
            self.log(f"choosing K in {k_range[0]}-{k_range[1]} on the {name} read-out's features (the network trained with {method.n_clusters} clusters)")
        head_labels = None
        if params.head_start:  # the head's clusters of the training set (the evaluation set is often it)
            head_labels = (head_proba if eval_data is self.train_data else self._predict_eval(self.train_data)).argmax(axis=1)
        # The read-out takes a minute or more on tens of thousands of images, after the last epoch
        # line: say what runs, and how long it took.
        started = time.perf_counter()
        smoothing = f", features smoothed over {params.neighbors} neighbours" if name == "smoothed" and params.rounds > 0 else ""
        self.log(f"fitting the {name} read-out on {len(self.train_data):,} images (k-means, {params.restarts} restarts{smoothing})")
        fitted, k_selection = fit_method_readout(self, method, name, params, k_range, head_labels)
        self.log(f"read-out fitted in {time.perf_counter() - started:.1f}s")
        if k_selection:
            criterion = K_CRITERION_TEXT[k_selection.get("criterion", "stability")][1]
            self.log(f"K = {k_selection['chosen']} chosen by the {criterion} criterion (see metrics.json 'k_selection')")
            if k_selection["chosen"] == k_range[0] < k_range[1]:
                # The coarsest clear split can win outright (Fashion-MNIST's clothes against shoes:
                # stability picks 2 of its 10 classes), so the range's floor is a weak answer.
                self.warn(
                    f"K = {k_range[0]} is the smallest K searched, where the coarsest clear split wins "
                    "(docs/results.md section 5): if you expect more groups, search above it with --clusters auto:MIN-MAX"
                )
        method.readout_fits = {name: fitted}
        method.predictor = name
        readout_proba = self._predict_eval(eval_data, description="predicting")
        method.predictor = predictor
        return head_proba, readout_proba, name, k_selection

    # --- several processes --------------------------------------------------------------------
    def _prepare_distributed(self, method: ClusteringMethod, n_samples: int) -> ClusteringMethod:
        batch_size = min(self.config.batch_size, n_samples)
        if self.world_size > 1 and batch_size % self.world_size != 0:
            raise UserError(
                f"--batch-size {batch_size} is the global batch and must be a multiple of the {self.world_size} processes "
                f"(each takes an equal share): use e.g. {max(1, batch_size // self.world_size) * self.world_size}"
            )
        if self.config.sync_batchnorm and self.world_size > 1:
            if self.device.type != "cuda":
                raise UserError(
                    f"--sync-batchnorm needs CUDA GPUs: PyTorch {torch.__version__.split('+')[0]}'s SyncBatchNorm does not run on the CPU; "
                    "drop the flag (each process then normalises with its own share of the batch)"
                )
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        return method

    def _wrap_for_training(self, method: ClusteringMethod) -> torch.nn.Module:
        if self.config.sync_batchnorm and self.world_size == 1:
            self.warn("--sync-batchnorm has no effect in a single process")
        if not (self.distributed and method.trainable):
            return method
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters: some steps leave parameters out (CLOT's self-labelling skips
        # the projection head, SwAV freezes its prototypes for a while); a method says whether
        # it may. Building the wrapper also copies rank 0's parameters and buffers everywhere.
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(method, device_ids=device_ids, find_unused_parameters=method.may_leave_parameters_unused())

    def _seed_shared(self, epoch: int) -> None:
        """Several processes: the same seed everywhere for the per-epoch hooks, so whole-data
        steps (k-means, SeLa's labelling, custom sampling orders) agree between processes."""
        if self.distributed:
            seed_everything(_derived_seed(self.config.seed, epoch, 0))

    def _seed_own(self, epoch: int) -> None:
        """Several processes: a seed of this process's own for its augmentations."""
        if self.distributed:
            seed_everything(_derived_seed(self.config.seed, epoch, 1 + self.rank))

    def _sync_after_epoch(self, epoch: int) -> None:
        if not self.distributed:
            return
        # DDP copies rank 0's buffers at the start of each forward, so after the last step each
        # process's batch-norm statistics include its own last batch: make them rank 0's again.
        dist_utils.broadcast_buffers(self.method)
        self._seed_shared(epoch)

    def _predict_eval(self, data: torch.Tensor, description: str | None = None) -> np.ndarray:
        """Cluster probabilities of the evaluation data: each process scores a slice, all get all."""
        if not dist_utils.is_distributed():
            return self.predict_proba(data, description=description)
        chunk = math.ceil(len(data) / self.world_size)
        shard = data[self.rank * chunk : (self.rank + 1) * chunk]
        if len(shard):
            proba = torch.from_numpy(self.predict_proba(shard, description=description))
        else:
            proba = torch.zeros((0, self.method.n_clusters))
        return dist_utils.all_gather_rows(proba).numpy()

    def _train_one_epoch(self, epoch, optimizer, scheduler, scaler) -> dict[str, float]:
        config = self.config
        method = self.method
        n = len(self.train_data)
        batch_size = min(config.batch_size, n)
        steps = n // batch_size
        totals: dict[str, float] = {}
        order = method.epoch_order(self, epoch)
        if order is not None:
            steps = len(order) // batch_size
        if self.distributed:
            if order is None:  # the same permutation on every process, from the seed and the epoch
                generator = torch.Generator().manual_seed(_derived_seed(config.seed, epoch, -1))
                order = torch.randperm(n, generator=generator)
            self._seed_own(epoch)
        batches = iterate_batches(self.train_data, batch_size, shuffle=True, drop_last=True, order=order, rank=self.rank, world_size=self.world_size)
        if getattr(self, "out_of_core", False):
            batches = prefetch_to_device(batches, self.device)
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, file=sys.stderr, disable=None)
        scale = scaler.get_scale() if scaler.is_enabled() else None  # loss scaling's, before each step
        with memory_guard(f"training (epoch {epoch + 1})", f"lower --batch-size (now {batch_size})"):
            for step, (batch, indices) in enumerate(batches):
                # Progressive partial OT (auto:p2ot) ramps its transported mass with this.
                method.training_progress = (epoch + step / max(steps, 1)) / config.epochs
                try:
                    with torch.autocast(self.device.type, enabled=self.use_amp):
                        parts = self.model(batch, indices)
                except ValueError as error:
                    # A diverged network's NaN or infinite scores reach a step's own solvers (Sinkhorn,
                    # k-means) before any loss exists: their ValueError is the divergence, not a bug.
                    if not self._diverged(error):
                        raise
                    raise UserError(self._diverged_message(f"the network's outputs became NaN or infinite at epoch {epoch + 1}, step {step + 1} (training diverged), and training stopped")) from None
                loss = parts["loss"]
                if not torch.isfinite(loss):
                    raise UserError(self._non_finite_loss_message(loss.detach().item(), epoch, step))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                # float16 AMP skips the optimizer's step when the scaled gradients overflow (and
                # lowers the scale): the schedule waits for the steps that were taken, and PyTorch
                # does not warn that the scheduler ran before the optimizer. One read of the scale
                # a step (a device sync, as GradScaler.step already makes one).
                previous, scale = scale, (scaler.get_scale() if scale is not None else None)
                if scale is None or scale >= previous:
                    scheduler.step()
                for key, value in parts.items():
                    totals[key] = totals.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
                if self.progress and hasattr(batches, "set_postfix"):
                    batches.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if dist_utils.is_distributed() and totals:
            # The epoch's losses are those of the global batches: the mean over processes.
            keys = sorted(totals)
            means = dist_utils.all_reduce_mean(torch.tensor([totals[key] for key in keys], dtype=torch.float64, device=self.device))
            totals = dict(zip(keys, means.tolist()))
        return {key: round(value / max(steps, 1), 5) for key, value in totals.items()}

    def _diverged(self, error: ValueError) -> bool:
        """Whether a training step's ValueError comes from diverged weights or outputs."""
        text = str(error).lower()
        if "nan" in text or "non-finite" in text:
            return True
        return not all(bool(torch.isfinite(p).all()) for p in self.method.parameters())

    def _non_finite_loss_message(self, value: float, epoch: int, step: int) -> str:
        return self._diverged_message(f"the loss became {value} at epoch {epoch + 1}, step {step + 1}, and training stopped")

    def _diverged_message(self, where: str, mid_epoch: bool = True) -> str:
        """One line: where training broke (`where`), what the run folder keeps, what to try."""
        if self.run_folder is None:
            return f"{where}; try a smaller lr (or, on a GPU, amp off)"
        if self.checkpoint_epoch > 0 and self.current_epoch is None:
            # Found after training: the last checkpoint holds the diverged network itself.
            kept = f"{self.run_folder / 'model.pt'} holds the diverged network"
        elif self.checkpoint_epoch > 0:
            kept = f"{self.run_folder / 'model.pt'} keeps the end of epoch {self.checkpoint_epoch} (--resume retries from there)"
        else:
            kept = "no epoch had finished, so no checkpoint was written" if mid_epoch else "no checkpoint had been written yet"
        return f"{where}; {kept}; to avoid it, start again with a smaller --lr (or --no-amp on a GPU) and --overwrite"

    def _resolve_budget(self, n_samples: int, features: bool = False) -> FitConfig:
        """The run's config with its epochs fixed (--epochs, --steps or the default budget for N
        samples), and the run's length in steps (`steps_per_epoch`, `total_steps`) for methods
        whose schedules are fractions of it."""
        config = self.config
        method_class = get_method_class(config.method)
        batch_size = method_class.training_batch_size(config.params, n_samples, config.batch_size)
        if batch_size != config.batch_size:
            # Before the budget, which counts samples seen: the same samples in more, smaller steps.
            self.log(f"note: batch {config.batch_size} -> {batch_size}, so that an epoch of {n_samples:,} samples holds several steps (--param min_steps_per_epoch=1 keeps {config.batch_size})")
            config = replace(config, batch_size=batch_size, params=dict(config.params), augment=dict(config.augment))
        self.steps_per_epoch = per_epoch = budget.steps_per_epoch(n_samples, config.batch_size)
        if config.epochs is None:
            trainable, short = method_class.trainable, method_class.short_budget(config.params, features)
            epochs = budget.resolve_epochs(config, n_samples, short) if trainable else 1
            scaled = "" if config.budget_scale == 1 else f"{config.budget_scale:g} x "  # budget_scale: a config file, compare --epochs-scale
            how = f"--steps {config.steps}" if config.steps is not None else f"{scaled}the {'short ' * short}default budget for {n_samples:,} samples"
            # The run's config.yaml then holds the epochs it trained, and reruns as it ran.
            config = replace(config, epochs=epochs, steps=None, params=dict(config.params), augment=dict(config.augment))
            if trainable:
                self.log(f"note: training {epochs} epoch{'s' * (epochs != 1)} of {per_epoch} step{'s' * (per_epoch != 1)} ({how}); --epochs or --steps sets it")
        self.total_steps = self.steps_per_epoch * config.epochs
        return config

    def _make_scheduler(self, optimizer, n_samples: int):
        config = self.config
        steps_per_epoch = budget.steps_per_epoch(n_samples, config.batch_size)
        total = steps_per_epoch * config.epochs
        warmup = steps_per_epoch * config.warmup_epochs

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if config.lr_schedule == "constant":
                return 1.0
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # --- checkpoints ----------------------------------------------------------------------
    def _save_checkpoint(self, epoch, optimizer, scheduler, history, seconds) -> None:
        state = trained_state(self.method, self.config)
        state.update({
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,
            "history": to_plain(history, "history"),
            "seconds": float(seconds),
            "rng": capture_rng_state(),
        })
        path = self.out.checkpoint_path
        had_one = path.is_file()
        try:
            write_checkpoint(state, path)
        except UserError as error:
            # The message already says the previous model.pt is kept; say what it is good for.
            raise UserError(f"{error}; --resume continues from the checkpoint kept" if had_one else str(error)) from None

    def _load_own_checkpoint(self) -> dict:
        if self.run_folder is None:
            raise UserError("resume needs an output folder with a checkpoint")
        path = RunWriter(self.run_folder).checkpoint_path
        if not self.distributed:
            checkpoint = read_checkpoint(path)
        else:
            # Rank 0 reads it and sends it to the others (their machines need not see the file).
            answer = None
            if self.is_main:
                try:
                    answer = ("ok", read_checkpoint(path))
                except UserError as error:
                    answer = ("error", str(error))
            status, value = dist_utils.broadcast_object(answer)
            if status == "error":
                raise UserError(value)
            checkpoint = value
        saved = checkpoint["config"]
        for key in ("method", "data", "clusters", "backbone"):
            if key == "data" and same_data(saved.get(key), self.config.data):
                continue
            if saved.get(key) != getattr(self.config, key):
                again = f": resume with the run's own settings, otclust fit --config {self.run_folder / 'config.yaml'} --out {self.run_folder} --resume" if self.run_folder is not None else ""
                raise UserError(f"cannot resume: the checkpoint was trained with {key}={saved.get(key)!r}, not {getattr(self.config, key)!r}{again}")
        # A pretrained backbone's weights are compared by content: another file is another
        # network, whose embeddings the head trained so far has never seen (the run would go on
        # as a mix of two); the same file moved or copied elsewhere is the same network.
        saved_sha, sha = saved.get("weights_sha256"), self.config.weights_sha256
        if saved_sha and sha and saved_sha != sha:
            raise UserError(
                f"cannot resume: the checkpoint was trained with weights sha256 {saved_sha[:12]}... ({saved.get('weights')}), "
                f"not {sha[:12]}... ({self.config.weights}): pass the original file with --weights (a copy elsewhere will do), "
                "or start a new run with --overwrite"
            )
        return checkpoint


def _describe(proba: np.ndarray, true_labels: np.ndarray | None) -> dict:
    """An epoch row's scores: always the head's (the read-out is fitted once, after training)."""
    labels = proba.argmax(axis=1)
    row = {"predictor": "head", "nonempty_clusters": int(len(np.unique(labels))), "mean_confidence": round(float(proba.max(axis=1).mean()), 4)}
    if true_labels is not None:
        row.update({k: round(v, 4) for k, v in evaluate_clustering(true_labels, labels).items()})
    return row


def _final_scores(proba: np.ndarray, true_labels: np.ndarray) -> dict:
    labels = proba.argmax(axis=1)
    return {**evaluate_clustering(true_labels, labels), "nonempty_clusters": int(len(np.unique(labels)))}


def _format_row(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}"]
    if "acc" in row:
        parts.append(f"({row.get('predictor', 'head')})")
    for key in ("acc", "nmi", "ari"):
        if key in row:
            parts.append(f"{key} {row[key]:.3f}")
    if "nonempty_clusters" in row:
        parts.append(f"clusters used {row['nonempty_clusters']}")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


def _derived_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed for (run seed, epoch, stream) that does not collide with nearby run seeds."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, stream % 2**32]).generate_state(1)[0])


def restore_method_state(method: ClusteringMethod, checkpoint: dict) -> None:
    """Only the names the method itself checkpoints: a file cannot set any other attribute."""
    own = method.method_state().keys()
    method.load_method_state({key: value for key, value in (checkpoint.get("method_state") or {}).items() if key in own})


def load_trained(path, device: str = "auto", predictor: str | None = None) -> tuple[ClusteringMethod, FitConfig]:
    """Rebuild a trained method from its checkpoint, ready to predict with `predictor` (head,
    kmeans or smoothed; default: the run's own)."""
    checkpoint = read_checkpoint(path)
    try:
        config = FitConfig(**checkpoint["config"])
        config.device = device
        # A checkpoint keeps the parameter names it was trained with: former ones are read as
        # today's without a warning, since there is nothing in the file for the user to change.
        config.params = current_param_names(get_method_class(config.method).Params, config.params, config.method, warn=False)
        spec = InputSpec(**checkpoint["spec"])
        if spec.image_size is not None:
            spec.image_size = tuple(spec.image_size)
        method = build_method(config, spec)
        method.load_state_dict(checkpoint["model"])
        restore_method_state(method, checkpoint)
        install_readout(method, checkpoint.get("readout"), predictor)
    except (TypeError, KeyError, ValueError, RuntimeError) as error:
        # A file of the right format whose contents do not build this otclust's model.
        raise UserError(f"{path} does not hold a model this otclust can rebuild ({type(error).__name__}); was it written by another version?") from None
    method.to(select_device(device)).eval()
    return method, config

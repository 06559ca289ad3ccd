"""The training engine every method plugs into.

One training step: the engine takes a shuffled batch of raw data already on the device, the
method turns it into views and losses (`training_step`), the engine back-propagates (with AMP
on CUDA), steps the optimizer and the learning-rate schedule. After each epoch it predicts the
whole evaluation set, scores it when labels exist (labels are never seen by the method),
appends a row to the history and writes an atomic checkpoint.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from otclust.config import FitConfig
from otclust.errors import UserError
from otclust.methods import ClusteringMethod, InputSpec, get_method_class
from otclust.methods.base import build_params
from otclust.metrics import evaluate_clustering
from otclust.ot.priors import parse_cluster_proportions
from otclust.runs import RunWriter, atomic_torch_save

CHECKPOINT_FORMAT = "otclust-checkpoint-1"


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA GPU is visible: use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_method(config: FitConfig, spec: InputSpec) -> ClusteringMethod:
    method_class = get_method_class(config.method)
    params = build_params(method_class.Params, config.params, config.method)
    if spec.n_samples < config.clusters:
        raise UserError(f"--clusters {config.clusters} is more than the {spec.n_samples} samples: choose fewer clusters")
    method = method_class(config.clusters, spec, params, backbone=config.backbone, augment=config.augment)
    mode, sizes = parse_cluster_proportions(config.cluster_proportions, config.clusters)
    method.set_cluster_prior(mode, sizes)
    return method


def iterate_batches(data: torch.Tensor, batch_size: int, shuffle: bool, drop_last: bool = False, order: torch.Tensor | None = None):
    """Yields (batch, indices) from a tensor; shuffling happens on the tensor's own device.

    `order` (indices, possibly repeating) replaces the shuffle when a method picks its samples.
    """
    if order is None:
        n = len(data)
        order = torch.randperm(n, device=data.device) if shuffle else torch.arange(n, device=data.device)
    else:
        order = order.to(data.device)
        n = len(order)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        indices = order[start : start + batch_size]
        yield data[indices], indices


@torch.no_grad()
def predict_in_batches(method, data, device, batch_size=1024, use_amp=False, description=None) -> np.ndarray:
    """N x K cluster probabilities of a whole tensor, batch by batch, in eval mode."""
    was_training = method.training
    method.eval()
    chunks = []
    batches = iterate_batches(data, batch_size, shuffle=False)
    if description:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=math.ceil(len(data) / batch_size), desc=description, leave=False, file=sys.stderr)
    for batch, _ in batches:
        with torch.autocast(device.type, enabled=use_amp):
            chunks.append(method.predict_proba(batch.to(device)).float().cpu())
    method.train(was_training)
    return torch.cat(chunks).numpy()


@torch.no_grad()
def embed_in_batches(method, data, device, batch_size=1024) -> np.ndarray:
    was_training = method.training
    method.eval()
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

    def __init__(self, config: FitConfig, out_dir: Path | None = None, progress: bool = True, log=None):
        self.config = config.validate()
        self.out = RunWriter(out_dir) if out_dir is not None else None
        self.progress = progress
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.device = select_device(config.device)
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        self.method: ClusteringMethod | None = None
        self.train_data: torch.Tensor | None = None  # the training set, on the device

    def iterate_batches(self, data: torch.Tensor, batch_size: int, shuffle: bool, drop_last: bool = False):
        return iterate_batches(data, batch_size, shuffle, drop_last)

    def predict_proba(self, data: torch.Tensor, batch_size: int = 1024, description: str | None = None) -> np.ndarray:
        return predict_in_batches(self.method, data, self.device, batch_size, self.use_amp, description if self.progress else None)

    def embed(self, data: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        return embed_in_batches(self.method, data, self.device, batch_size)

    # --- the loop -------------------------------------------------------------------------
    def fit(self, dataset, eval_dataset=None, resume: bool = False) -> FitResult:
        config = self.config
        eval_dataset = eval_dataset or dataset
        seed_everything(config.seed)
        spec = InputSpec.from_dataset(dataset)
        checkpoint = self._load_own_checkpoint() if resume else None
        if checkpoint is not None:
            spec = InputSpec(**checkpoint["spec"])
        self.method = method = build_method(config, spec).to(self.device)
        self.train_data = dataset.data.to(self.device)
        eval_data = eval_dataset.data.to(self.device) if eval_dataset is not dataset else self.train_data
        history: list[dict] = []
        start_epoch = 0
        seconds_before = 0.0
        optimizer = scheduler = None
        if method.trainable:
            optimizer = torch.optim.Adam(method.parameter_groups(), lr=config.lr, weight_decay=config.weight_decay)
            scheduler = self._make_scheduler(optimizer, dataset.n_samples)
        if checkpoint is not None:
            method.load_state_dict(checkpoint["model"])
            method.load_method_state(checkpoint.get("method_state", {}))
            if optimizer is not None:
                optimizer.load_state_dict(checkpoint["optimizer"])
                scheduler.load_state_dict(checkpoint["scheduler"])
            history = checkpoint["history"]
            start_epoch = checkpoint["epoch"]
            seconds_before = checkpoint.get("seconds", 0.0)
            _set_rng_state(checkpoint["rng"])
            self.log(f"resuming from epoch {start_epoch} of {config.epochs}")
        if self.out is not None:
            self.out.write_config(config.to_dict())
        for note in dataset.notes:
            self.log(f"note: {note}")

        started = time.perf_counter()
        if not method.trainable:
            method.fit_without_training(self)
            history = []
        else:
            scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
            method.on_fit_start(self)
            for epoch in range(start_epoch, config.epochs):
                epoch_started = time.perf_counter()
                method.train()
                method.on_epoch_start(self, epoch)
                losses = self._train_one_epoch(epoch, optimizer, scheduler, scaler)
                method.on_epoch_end(self, epoch, losses)
                row = {"epoch": epoch + 1, **{f"loss_{k}" if k != "loss" else k: v for k, v in losses.items()}, "lr": optimizer.param_groups[0]["lr"]}
                last = epoch + 1 == config.epochs
                if (epoch + 1) % config.eval_every == 0 or last:
                    proba = self.predict_proba(eval_data)
                    row.update(_describe(proba, eval_dataset.labels))
                row["seconds"] = round(time.perf_counter() - epoch_started, 3)
                history.append(row)
                self.log(_format_row(row, config.epochs))
                if self.out is not None:
                    self.out.write_history(history)
                    self._save_checkpoint(epoch + 1, optimizer, scheduler, history, seconds_before + time.perf_counter() - started)
        seconds = seconds_before + time.perf_counter() - started
        proba = self.predict_proba(eval_data, description="predicting")
        labels = proba.argmax(axis=1)
        metrics = {"method": config.method, "data": config.data, "clusters": config.clusters, "epochs": config.epochs, "seed": config.seed, "n_samples": int(len(proba))}
        if eval_dataset.labels is not None:
            metrics.update(evaluate_clustering(eval_dataset.labels, labels))
        else:
            metrics["note"] = "no labels: ACC/NMI/ARI not computed"
        metrics["nonempty_clusters"] = int(len(np.unique(labels)))
        metrics["seconds"] = round(seconds, 2)
        if self.out is not None:
            if not method.trainable:
                self._save_checkpoint(0, None, None, history, seconds)
            self.out.write_final_metrics(metrics)
            self.out.write_assignments(proba, eval_dataset.labels, eval_dataset.paths)
        return FitResult(method=method, proba=proba, labels=labels, metrics=metrics, history=history)

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
        batches = iterate_batches(self.train_data, batch_size, shuffle=True, drop_last=True, order=order)
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, file=sys.stderr)
        for step, (batch, indices) in enumerate(batches):
            with torch.autocast(self.device.type, enabled=self.use_amp):
                parts = method.training_step(batch, indices)
            loss = parts["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; try a smaller --lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
            if self.progress and hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
        return {key: round(value / max(steps, 1), 5) for key, value in totals.items()}

    def _make_scheduler(self, optimizer, n_samples: int):
        config = self.config
        steps_per_epoch = max(1, n_samples // min(config.batch_size, n_samples))
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
            "history": history,
            "seconds": seconds,
            "rng": _get_rng_state(),
        })
        atomic_torch_save(state, self.out.checkpoint_path)

    def _load_own_checkpoint(self) -> dict:
        if self.out is None:
            raise UserError("resume needs an output folder with a checkpoint")
        checkpoint = read_checkpoint(self.out.checkpoint_path)
        saved = checkpoint["config"]
        for key in ("method", "data", "clusters", "backbone"):
            if saved.get(key) != getattr(self.config, key):
                raise UserError(f"cannot resume: the checkpoint was trained with {key}={saved.get(key)!r}, not {getattr(self.config, key)!r}")
        return checkpoint


def trained_state(method: ClusteringMethod, config: FitConfig) -> dict:
    """What a trained model needs to predict again: the core of every checkpoint."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "spec": asdict(method.spec),
        "model": method.state_dict(),
        "method_state": method.method_state(),
    }


def _describe(proba: np.ndarray, true_labels: np.ndarray | None) -> dict:
    labels = proba.argmax(axis=1)
    row = {"nonempty_clusters": int(len(np.unique(labels))), "mean_confidence": round(float(proba.max(axis=1).mean()), 4)}
    if true_labels is not None:
        row.update({k: round(v, 4) for k, v in evaluate_clustering(true_labels, labels).items()})
    return row


def _format_row(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}"]
    for key in ("acc", "nmi", "ari"):
        if key in row:
            parts.append(f"{key} {row[key]:.3f}")
    if "nonempty_clusters" in row:
        parts.append(f"clusters used {row['nonempty_clusters']}")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


def _get_rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path) -> dict:
    """Load a checkpoint written by otclust, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (pass the model.pt of a run folder)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure to unpickle means 'not our file'
        raise UserError(f"cannot read checkpoint {path}: {type(error).__name__}; is it an otclust model.pt?") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an otclust checkpoint")
    return checkpoint


def load_trained(path, device: str = "auto") -> tuple[ClusteringMethod, FitConfig]:
    """Rebuild a trained method from its checkpoint, ready to predict."""
    checkpoint = read_checkpoint(path)
    config = FitConfig(**checkpoint["config"])
    config.device = device
    spec = InputSpec(**checkpoint["spec"])
    if spec.image_size is not None:
        spec.image_size = tuple(spec.image_size)
    method = build_method(config, spec)
    method.load_state_dict(checkpoint["model"])
    method.load_method_state(checkpoint.get("method_state", {}))
    method.to(select_device(device)).eval()
    return method, config

"""A data set through a frozen pretrained backbone: embedded once, cached with its kNN graph.

The cache lives in ``$XDG_CACHE_HOME/otclust/embeddings/KEY.*`` (``~/.cache/...``); KEY is a
hash of what decides the embeddings: the images' bytes, the backbone's name, the sha256 of its
weights and its preprocessing. ``KEY.npy`` holds the N x D float32 features, ``KEY.knn.npy`` the
N x k indices of each one's nearest neighbours (cosine, itself excluded, nearest first) and
``KEY.json`` what made them. `otclust embed` fills the cache (and can copy it to a features file);
`fit`, `predict` and the estimator read it, so a data set is embedded once per backbone.
Embeddings holding NaN or infinity (damaged weights) are refused in one line, never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from otclust.data.datasets import ImageDataset
from otclust.data.formats import cache_dir
from otclust.distributed import select_device
from otclust.errors import UserError
from otclust.models.pretrained import load_extractor
from otclust.readout.neighbors import nearest_neighbors
from otclust.runs import atomic_write_text

EMBEDDING_FORMAT = "otclust-embeddings-1"
CACHE_NEIGHBORS = 50  # neighbours kept per sample in the cached graph (TEMI's k on ImageNet)

# CLOT's settings for frozen features, under the user's own --param values: the second view is a
# neighbour from the frozen space (SCAN, TEMI) found once, and several heads train side by side,
# the lowest-loss one being the 'head' predictor (TEMI's recipe). The run predicts by the shared
# smoothed read-out, as every method does: on frozen features too it beat the head on every set
# measured (docs/pretrained.md). The cluster loss keeps the weight 0.3 these settings were measured
# with; CLOT's own default (1.0 since 2026-12-05) was chosen on networks trained from pixels.
PRETRAINED_CLOT_PARAMS = {"neighbors": 20, "neighbor_source": "input", "n_heads": 5, "cluster_weight": 0.3}


def data_sha256(data: torch.Tensor) -> str:
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(np.ascontiguousarray(data.cpu().numpy()).data)
    return digest.hexdigest()


@dataclass
class Embeddings:
    features: np.ndarray  # N x D float32
    neighbors: np.ndarray | None  # N x k nearest neighbours (int64), nearest first
    meta: dict = field(default_factory=dict)
    from_cache: bool = False


def embed_images(extractor, data: torch.Tensor, device: torch.device, batch_size: int = 128, progress: bool = True) -> np.ndarray:
    """N x D features of uint8 images, batch by batch on `device`, with a progress bar in images/s."""
    extractor = extractor.to(device).eval()
    chunks = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(data), unit="img", desc=f"embedding with {extractor.backbone}", leave=False, file=sys.stderr, disable=None)
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            batch = data[start : start + batch_size].to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                chunks.append(extractor(batch).float().cpu())
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, extractor.out_dim), dtype=np.float32)


def check_finite(features: np.ndarray, extractor, device: torch.device) -> None:
    """Refuse embeddings holding NaN or infinity before anything is cached or written: a frozen
    network gives them for damaged weights (a NaN in one batch-norm scale makes every embedding
    NaN), and passed on they made a meaningless kNN graph and a fit that blamed the learning rate."""
    bad = int((~np.isfinite(features).all(axis=1)).sum())
    if bad:
        overflow = "; on a GPU, float16 may also overflow: try --device cpu" if device.type == "cuda" else ""
        raise UserError(
            f"the embeddings of {bad} of {len(features)} images by {extractor.backbone} are NaN or infinite: the weights file "
            f"{extractor.weights_path} is likely damaged or not for this network (nothing was cached){overflow}"
        )


def knn_graph(features: np.ndarray, k: int, device: torch.device) -> np.ndarray:
    return nearest_neighbors(torch.from_numpy(features).to(device), k).cpu().numpy()


def cache_key(data: torch.Tensor, extractor) -> str:
    parts = [EMBEDDING_FORMAT, data_sha256(data), extractor.backbone, extractor.weights_sha256, extractor.describe()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _cache_paths(key: str) -> tuple[Path, Path, Path]:
    base = cache_dir("embeddings") / key
    return base.with_suffix(".npy"), Path(f"{base}.knn.npy"), base.with_suffix(".json")


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(temporary, "wb") as handle:
        np.save(handle, array)
    os.replace(temporary, path)


def _read_cache(key: str, n: int) -> Embeddings | None:
    features_path, knn_path, meta_path = _cache_paths(key)
    if not (features_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        features = np.load(features_path, allow_pickle=False)
        neighbors = np.load(knn_path, allow_pickle=False).astype(np.int64) if knn_path.is_file() else None
    except (OSError, ValueError):
        return None  # a damaged entry is recomputed
    if meta.get("key") != key or features.shape[0] != n or (neighbors is not None and neighbors.shape[0] != n):
        return None
    if not np.isfinite(features).all():
        return None  # cached before embeddings were checked: embedded again, and refused then
    return Embeddings(features.astype(np.float32, copy=False), neighbors, meta)


def embed_dataset(
    dataset: ImageDataset,
    extractor,
    device: torch.device,
    batch_size: int = 128,
    neighbors: int = CACHE_NEIGHBORS,
    progress: bool = True,
    use_cache: bool = True,
    log=None,
) -> Embeddings:
    """The data set's features (and, with neighbors > 0, their kNN graph), from the cache when it
    has them for these images, this backbone and these weights; else computed (refused when not
    finite: ``check_finite``) and cached."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if dataset.is_features:
        raise UserError(f"a pretrained backbone embeds images, and {dataset.name} holds feature vectors: drop --backbone {extractor.backbone}")
    key = cache_key(dataset.data, extractor)
    cached = _read_cache(key, dataset.n_samples) if use_cache else None
    if cached is not None and (neighbors == 0 or (cached.neighbors is not None and cached.neighbors.shape[1] >= min(neighbors, dataset.n_samples - 1))):
        log(f"embeddings of {dataset.name} by {extractor.backbone} read from the cache ({_cache_paths(key)[0]})")
        cached.from_cache = True
        # The key is the images' bytes: a copy of the folder elsewhere hits the entry of the first
        # one embedded, and what is written from here (embed --out's JSON) names the data asked for.
        cached.meta = {**cached.meta, "data": dataset.name}
        return cached
    if cached is not None:  # features cached, a wider graph wanted
        features, meta = cached.features, {**cached.meta, "data": dataset.name}
    else:
        started = time.perf_counter()
        features = embed_images(extractor, dataset.data, device, batch_size, progress)
        seconds = time.perf_counter() - started
        check_finite(features, extractor, device)
        meta = {
            "key": key,
            "format": EMBEDDING_FORMAT,
            "data": dataset.name,
            "n_samples": dataset.n_samples,
            "image_shape": list(dataset.data.shape[1:]),
            "backbone": extractor.backbone,
            "weights_sha256": extractor.weights_sha256,
            "preprocess": extractor.describe(),
            "dim": int(features.shape[1]),
            "device": str(device),
            "seconds": round(seconds, 2),
            "images_per_second": round(dataset.n_samples / max(seconds, 1e-9), 1),
        }
        log(f"embedded {dataset.n_samples} images with {extractor.backbone} in {seconds:.1f} s ({meta['images_per_second']:.1f} images/s)")
    graph = None
    if neighbors > 0 and dataset.n_samples > 1:
        started = time.perf_counter()
        graph = knn_graph(features, neighbors, device)
        meta["neighbors"] = int(graph.shape[1])
        meta["knn_seconds"] = round(time.perf_counter() - started, 2)
    if use_cache:
        features_path, knn_path, meta_path = _cache_paths(key)
        _save_npy(features_path, features)
        if graph is not None:
            _save_npy(knn_path, graph.astype(np.int32))
        atomic_write_text(meta_path, json.dumps(meta, indent=1))
    return Embeddings(features, graph, meta)


def features_dataset(dataset: ImageDataset, features: np.ndarray) -> ImageDataset:
    """The images' feature vectors as a data set with the images' labels, paths and names."""
    return ImageDataset(
        data=torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
        labels=dataset.labels,
        name=dataset.name,
        paths=dataset.paths,
        class_names=dataset.class_names,
        notes=list(dataset.notes),
        split=dataset.split,
    )


def features_file_paths(out: Path) -> dict[str, Path]:
    """Every file write_features_file may write for OUT.npy, by what it holds: features, labels,
    knn, meta (embed checks them all before embedding anything)."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix == ".npy" else out
    return {"features": Path(f"{base}.npy"), "labels": Path(f"{base}.labels.npy"), "knn": Path(f"{base}.knn.npy"), "meta": Path(f"{base}.json")}


def write_features_file(out: Path, embeddings: Embeddings, labels: np.ndarray | None) -> list[Path]:
    """OUT.npy (features; --data features:OUT.npy reads them as plain vectors), OUT.labels.npy when labels exist,
    OUT.knn.npy (the kNN graph) and OUT.json (what made them); returns the paths written."""
    paths = features_file_paths(out)
    written = [paths["features"]]
    _save_npy(written[0], embeddings.features)
    if labels is not None:
        written.append(paths["labels"])
        _save_npy(written[-1], np.asarray(labels, dtype=np.int64))
    if embeddings.neighbors is not None:
        written.append(paths["knn"])
        _save_npy(written[-1], embeddings.neighbors.astype(np.int32))
    written.append(paths["meta"])
    atomic_write_text(written[-1], json.dumps(embeddings.meta, indent=1))
    return written


# --- the stage in front of fit / predict / the estimator -------------------------------------


def _extractor_for(config, weights: str | None = None):
    extractor = load_extractor(config.backbone, weights or config.weights, download=bool(config.download))
    expected = getattr(config, "weights_sha256", None)
    if expected and extractor.weights_sha256 != expected:
        raise UserError(
            f"weights file {extractor.weights_path} (sha256 {extractor.weights_sha256[:12]}...) is not the one this model was trained with "
            f"(sha256 {expected[:12]}...): pass the original file with --weights"
        )
    return extractor


def pretrained_training_data(config, dataset: ImageDataset, eval_dataset: ImageDataset | None = None, progress: bool = True, log=None):
    """fit's frozen stage: (training features, evaluation features or None, kNN graph tensor or None).

    Records the weights file and its sha256 in `config` (so the checkpoint names them) and puts
    CLOT's frozen-feature settings under the user's own --param values."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    extractor = _extractor_for(config)
    config.weights = extractor.weights_path
    config.weights_sha256 = extractor.weights_sha256
    if config.method == "clot":
        defaults = {k: v for k, v in PRETRAINED_CLOT_PARAMS.items() if k not in config.params}
        config.params = {**defaults, **config.params}
    device = select_device(config.device)
    wanted = int(config.params.get("neighbors", 0) or 0) if config.method == "clot" else 0
    embeddings = embed_dataset(dataset, extractor, device, neighbors=max(wanted, CACHE_NEIGHBORS) if wanted else 0, progress=progress, log=log)
    train = features_dataset(dataset, embeddings.features)
    evaluation = None
    if eval_dataset is not None and eval_dataset is not dataset:
        evaluation = features_dataset(eval_dataset, embed_dataset(eval_dataset, extractor, device, neighbors=0, progress=progress, log=log).features)
    graph = torch.from_numpy(embeddings.neighbors) if embeddings.neighbors is not None else None
    return train, evaluation, graph


def features_for_model(config, dataset: ImageDataset, weights: str | None = None, device: str = "auto", progress: bool = True, log=None) -> ImageDataset:
    """New images through the backbone a trained model was fitted behind (refusing other weights)."""
    if dataset.is_features:
        return dataset
    extractor = _extractor_for(config, weights)
    embeddings = embed_dataset(dataset, extractor, select_device(device), neighbors=0, progress=progress, log=log)
    return features_dataset(dataset, embeddings.features)


__all__ = [
    "CACHE_NEIGHBORS",
    "Embeddings",
    "embed_dataset",
    "embed_images",
    "features_dataset",
    "features_for_model",
    "pretrained_training_data",
    "write_features_file",
]

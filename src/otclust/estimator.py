"""scikit-learn style access: OTClust(method=..., n_clusters=K).fit(X).labels_."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin

from otclust.config import FitConfig
from otclust.errors import UserError
from otclust.models.pretrained import is_pretrained


def dataset_from_array(X, name: str = "array"):
    """Arrays of images (N,H,W), (N,H,W,C), (N,C,H,W) or feature vectors (N,D) -> ImageDataset."""
    from otclust.data import ImageDataset

    array = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    if array.ndim not in (2, 3, 4) or array.shape[0] == 0:
        raise UserError(f"X must be images (N,H,W), (N,H,W,C), (N,C,H,W) or features (N,D); got shape {array.shape}")
    if array.dtype.kind not in "uifb":
        raise UserError(f"X must be numeric, got dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserError("X contains NaN or infinite values: remove or impute them first")
    if array.ndim == 2:
        return ImageDataset(data=torch.from_numpy(array.astype(np.float32)), labels=None, name=name)
    if array.ndim == 3:
        array = array[:, None]
    elif array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.shape[1] not in (1, 3):
        raise UserError(f"images must have 1 or 3 channels, got shape {array.shape}")
    if array.dtype != np.uint8:
        values = array.astype(np.float64)
        top = values.max()
        # Floats in [0, 1] are intensities; anything larger is taken as 0..255.
        scale = 255.0 if top <= 1.0 else 255.0 / max(top, 255.0)
        array = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return ImageDataset(data=torch.from_numpy(np.ascontiguousarray(array)), labels=None, name=name)


class OTClust(BaseEstimator, ClusterMixin):
    """Deep clustering estimator: any otclust method behind fit / predict / fit_predict.

    Parameters mirror `otclust fit`; `params` holds the method's hyper-parameters (e.g.
    {"lam": 20} for CLOT). After fit, `labels_` holds the training samples' clusters.
    """

    def __init__(self, method="clot", n_clusters=10, epochs=None, batch_size=None, lr=None, seed=0, device="auto", backbone="auto", cluster_proportions="uniform", params=None, augment=None, verbose=False, weights=None):
        self.method = method
        self.n_clusters = n_clusters
        self.epochs = epochs
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

    def _config(self) -> FitConfig:
        from otclust.methods import get_method_class

        values = dict(get_method_class(self.method).default_config)
        values.update(method=self.method, data="array", clusters=self.n_clusters, seed=self.seed, device=self.device, backbone=self.backbone, cluster_proportions=self.cluster_proportions, params=dict(self.params or {}), augment=dict(self.augment or {}), weights=self.weights)
        for key in ("epochs", "batch_size", "lr"):
            if getattr(self, key) is not None:
                values[key] = getattr(self, key)
        return FitConfig(**values)

    def fit(self, X, y=None):
        """Train on X; y is ignored (present for scikit-learn pipelines)."""
        from otclust.engine import Trainer

        dataset = dataset_from_array(X)
        config = self._config()
        neighbors = None
        if is_pretrained(config.backbone):  # frozen stage: X is embedded once (cached), the method trains on that
            from otclust.data.embeddings import pretrained_training_data

            dataset, _, neighbors = pretrained_training_data(config, dataset, progress=self.verbose, log=(None if self.verbose else lambda message: None))
        trainer = Trainer(config, out_dir=None, progress=self.verbose, log=(None if self.verbose else lambda message: None))
        trainer.input_neighbors = neighbors
        result = trainer.fit(dataset)
        self.model_ = result.method
        self.config_ = trainer.config
        self.labels_ = result.labels
        self.history_ = result.history
        return self

    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise UserError("this OTClust is not fitted yet: call fit(X) or OTClust.load(path) first")

    def predict_proba(self, X) -> np.ndarray:
        from otclust.data import conform
        from otclust.engine import predict_in_batches, select_device

        self._check_fitted()
        dataset = dataset_from_array(X)
        if is_pretrained(self.config_.backbone) and not dataset.is_features:  # the same frozen backbone first
            from otclust.data.embeddings import features_for_model

            dataset = features_for_model(self.config_, dataset, device=self.device, progress=self.verbose, log=(None if self.verbose else lambda message: None))
        spec = self.model_.spec
        if not spec.is_features and (dataset.is_features or (dataset.channels, dataset.image_size) != (spec.channels, tuple(spec.image_size))):
            if dataset.is_features:
                raise UserError("the model was trained on images but X holds feature vectors")
            dataset = conform(dataset, spec.channels, tuple(spec.image_size))
        elif spec.is_features and (not dataset.is_features or dataset.data.shape[1] != spec.feature_dim):
            raise UserError(f"the model expects feature vectors of length {spec.feature_dim}")
        device = next(self.model_.parameters(), torch.empty(0)).device
        return predict_in_batches(self.model_, dataset.data, device)

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_

    def save(self, path) -> None:
        """Write a checkpoint that `OTClust.load` and `otclust predict --checkpoint` both read."""
        from otclust.engine import trained_state
        from otclust.runs import atomic_torch_save

        self._check_fitted()
        state = trained_state(self.model_, self.config_)
        state["estimator_params"] = self.get_params()
        state["labels"] = self.labels_
        atomic_torch_save(state, path)

    @classmethod
    def load(cls, path, device: str = "auto") -> "OTClust":
        from otclust.engine import load_trained, read_checkpoint

        checkpoint = read_checkpoint(path)
        method, config = load_trained(path, device=device)
        estimator = cls(**{**checkpoint.get("estimator_params", {}), "device": device}) if "estimator_params" in checkpoint else cls(method=config.method, n_clusters=config.clusters, device=device)
        estimator.model_ = method
        estimator.config_ = config
        if "labels" in checkpoint:
            estimator.labels_ = checkpoint["labels"]
        return estimator

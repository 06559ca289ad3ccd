"""The mechanisms that make each method what it is, each checked in isolation against an
independent computation, so that a method quietly doing something else fails here:
CLOT's swapped targets, DeepCluster's classifier reset and optimizer-state clearing, and the
PCA whitening DeepCluster/DeeperCluster cluster in."""

import numpy as np
import ot
import pytest
import torch
from sklearn.decomposition import PCA
from torch.optim.optimizer import register_optimizer_step_post_hook

from otclust.config import FitConfig
from otclust.engine import Trainer
from otclust.estimator import dataset_from_array
from otclust.methods.base import InputSpec
from otclust.methods.clot import Clot, ClotParams
from otclust.errors import UserError
from otclust.methods.deepcluster import DeepCluster, DeepClusterParams, automatic_pca_dim
from otclust.methods.deepercluster import DeeperCluster, DeeperClusterParams


def quiet(message):
    pass


def pot_targets(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """CLOT's Q = diag(u) P^lambda diag(v) (lambda = 1/eps) with equal cluster sizes, rows rescaled
    to sum to 1, from POT (float64), not from our solver."""
    log_p = torch.log_softmax(logits.double(), dim=1).numpy()
    n, k = log_p.shape
    plan = ot.sinkhorn(np.full(n, 1 / n), np.full(k, 1 / k), -log_p, eps, stopThr=1e-12, numItermax=100000)
    return torch.from_numpy(plan * n)


def test_clot_each_view_learns_the_other_views_targets_without_gradient_through_them():
    n, k = 24, 3
    spec = InputSpec(n_samples=n, feature_dim=6, mean=[0.0] * 6, std=[1.0] * 6)
    torch.manual_seed(0)
    params = ClotParams(cluster_weight=1.0, contrastive_weight=0.0, predict_by="head", sinkhorn_tol=1e-9, sinkhorn_iters=20000)
    method = Clot(k, spec, params)
    # Two views that the network sees very differently, so that Q of view a and Q of view b differ.
    view_a, view_b = 3 * torch.randn(n, 6), 3 * torch.randn(n, 6)
    method.views = lambda batch, count=2: [view_a, view_b]
    captured = []

    def keep_logits(module, inputs, outputs):
        for logits in outputs:
            logits.retain_grad()
        captured.extend(outputs)

    method.cluster_head.register_forward_hook(keep_logits)
    parts = method.training_step(torch.zeros(n, 6), torch.arange(n))
    parts["loss"].backward()
    (logits,) = captured
    logits_a, logits_b = logits.detach().chunk(2)
    q_a, q_b = pot_targets(logits_a, params.sinkhorn_eps), pot_targets(logits_b, params.sinkhorn_eps)
    assert (q_a - q_b).abs().max() > 0.2  # the swapped and the same-view losses differ clearly
    # Soft cross-entropy against a constant target q has gradient (softmax - q) / N per view; the
    # loss is the mean of the two directions. Targets with gradient, or not swapped, change it.
    expected_a = 0.5 * (torch.softmax(logits_a.double(), dim=1) - q_b) / n
    expected_b = 0.5 * (torch.softmax(logits_b.double(), dim=1) - q_a) / n
    grad_a, grad_b = logits.grad.double().chunk(2)
    torch.testing.assert_close(grad_a, expected_a, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(grad_b, expected_b, atol=1e-6, rtol=1e-4)
    same_view = 0.5 * (torch.softmax(logits_a.double(), dim=1) - q_a) / n
    assert (grad_a - same_view).abs().max() > 1e-3


def _tiny_images(n=60, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, size=(n, size, size)).astype(np.uint8)
    dataset = dataset_from_array(images)
    dataset.labels = np.arange(n) % 3
    return dataset


def test_deepcluster_resets_its_classifier_and_its_optimizer_state_every_epoch(monkeypatch):
    epochs = 3
    trained, restarted = [], []
    original_start, original_end = DeepCluster.on_epoch_start, DeepCluster.on_epoch_end

    def record_start(self, trainer, epoch):
        original_start(self, trainer, epoch)
        restarted.append((self.classifier.weight.detach().clone(), self.classifier.bias.detach().clone()))

    def record_end(self, trainer, epoch, losses):
        trained.append(self.classifier.weight.detach().clone())
        original_end(self, trainer, epoch, losses)

    monkeypatch.setattr(DeepCluster, "on_epoch_start", record_start)
    monkeypatch.setattr(DeepCluster, "on_epoch_end", record_end)
    optimizers = []
    handle = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: optimizers.append(optimizer))
    try:
        config = FitConfig(method="deepcluster", clusters=3, epochs=epochs, batch_size=20, lr=1e-2, seed=0, params={"pca_dim": 4, "kmeans_restarts": 1})
        result = Trainer(config, progress=False, log=quiet).fit(_tiny_images())
    finally:
        handle.remove()
    method = result.method
    assert len(restarted) == epochs and len(trained) == epochs
    for epoch, (weight, bias) in enumerate(restarted):
        # The reference's re-initialisation: N(0, 0.01) weights, zero bias, nothing of the last epoch.
        assert torch.all(bias == 0)
        assert 0.007 < float(weight.std()) < 0.013 and abs(float(weight.mean())) < 0.003
        if epoch > 0:
            # A fresh draw is uncorrelated with the weights trained in the last epoch; a classifier
            # kept (or only nudged) would correlate almost perfectly with them.
            correlation = torch.corrcoef(torch.stack([weight.flatten(), trained[epoch - 1].flatten()]))[0, 1]
            assert abs(float(correlation)) < 0.5
    # Adam's moments: the classifier's were dropped at every epoch start, the backbone's kept.
    optimizer = optimizers[-1]
    backbone_steps = int(optimizer.state[next(method.backbone.parameters())]["step"])
    steps_per_epoch, remainder = divmod(backbone_steps, epochs)
    assert remainder == 0 and steps_per_epoch > 0
    for param in method.classifier.parameters():
        assert int(optimizer.state[param]["step"]) == steps_per_epoch


def test_pca_whitening_equals_scikit_learns_whitened_pca():
    rng = np.random.default_rng(0)
    dim, kept, n = 12, 5, 300
    # Anisotropic, correlated features with a non-zero mean: whitening has something to undo.
    features = (rng.standard_normal((n, dim)) * np.linspace(5, 0.5, dim)) @ rng.standard_normal((dim, dim)) + 3.0
    spec = InputSpec(n_samples=n, feature_dim=dim, mean=[0.0] * dim, std=[1.0] * dim)
    method = DeepCluster(3, spec, DeepClusterParams(pca_dim=kept))
    method.backbone.out_dim = dim  # fit_pca and whiten work on given features; only the sizes matter
    method.init_feature_clustering()
    x = torch.tensor(features, dtype=torch.float32)
    method.fit_pca(x)
    projected = ((x - method.pca_mean) @ method.pca_components.T * method.pca_scale).double().numpy()
    reference = PCA(n_components=kept, whiten=True, svd_solver="full").fit_transform(features)
    # Components are defined up to sign: align each column's sign, then compare.
    signs = np.sign((projected * reference).sum(0))
    np.testing.assert_allclose(projected * signs, reference, atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(kept), atol=1e-4)
    # What k-means sees: the whitened rows on the unit sphere.
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    np.testing.assert_allclose(method.whiten(x).double().numpy() * signs, unit, atol=2e-4)


def test_deepcluster_draws_its_batches_uniformly_over_the_pseudo_labels():
    spec = InputSpec(n_samples=120, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = DeepCluster(3, spec, DeepClusterParams(pca_dim=2))
    method.pseudo_labels = torch.cat([torch.zeros(100), torch.ones(15), torch.full((5,), 2.0)]).long()
    torch.manual_seed(0)
    order = method.epoch_order(trainer=None, epoch=0)
    assert order is not None and len(order) == 120
    # A plain shuffle would give 100 / 15 / 5; the paper's sampler gives each label a third.
    counts = torch.bincount(method.pseudo_labels[order], minlength=3)
    assert counts.min() >= 35


def test_known_cluster_sizes_are_the_column_sums_of_clots_targets():
    n, k = 60, 3
    spec = InputSpec(n_samples=n, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = Clot(k, spec, ClotParams(sinkhorn_tol=1e-7, sinkhorn_iters=20000))
    sizes = torch.tensor([0.6, 0.3, 0.1])
    method.set_cluster_prior("known", sizes)
    # Predictions ranked like the prior (cluster 0 most predicted, 2 least), so the prior goes to
    # the clusters in its own order, but far flatter than it: only the prior can make Q this uneven.
    torch.manual_seed(0)
    logits = 0.1 * torch.randn(n, k) + torch.tensor([0.3, 0.15, 0.0])
    q = method.pseudo_labels(logits)
    torch.testing.assert_close(q.sum(1), torch.ones(n), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.mean(0), sizes, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method_class,params_class", [(DeepCluster, DeepClusterParams), (DeeperCluster, DeeperClusterParams)])
def test_automatic_pca_dim_keeps_a_sixteenth_of_the_features(method_class, params_class):
    """pca_dim 0 keeps DeepCluster's share (256 of 4096); a given pca_dim wins; a negative one is refused."""
    spec = InputSpec(n_samples=500, channels=1, image_size=(8, 8), mean=[0.5], std=[0.25])
    method = method_class(3, spec, params_class())
    assert method.backbone.out_dim == 256 and method.pca_components_n == 16
    assert tuple(method.pca_components.shape) == (16, 256)
    assert method_class(3, spec, params_class(pca_dim=40)).pca_components_n == 40
    assert automatic_pca_dim(512) == 32 and automatic_pca_dim(4096) == 256 and automatic_pca_dim(8) == 2
    with pytest.raises(UserError, match="pca_dim must be 0"):
        method_class(3, spec, params_class(pca_dim=-1))

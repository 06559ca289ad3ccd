import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from otclust.config import FitConfig
from otclust.engine import Trainer, load_trained
from otclust.estimator import dataset_from_array
from otclust.methods.kmeans import KMeansBaseline
from otclust.runs import prepare_output_folder


def fit(dataset, tmp_path=None, **overrides):
    config = FitConfig(method="kmeans", clusters=3, seed=0, **overrides)
    return Trainer(config, out_dir=tmp_path, progress=False, log=lambda m: None).fit(dataset)


def test_kmeans_is_not_trained_and_clusters_the_blobs(blob_images):
    images, labels = blob_images
    dataset = dataset_from_array(images)
    dataset.labels = labels
    result = fit(dataset)
    assert KMeansBaseline.trainable is False and result.history == []
    assert result.metrics["acc"] > 0.95
    assert result.method.centers.shape == (3, 64)


def test_kmeans_matches_scikit_learn_on_the_standardised_pixels(blob_images):
    images, _ = blob_images
    dataset = dataset_from_array(images)
    result = fit(dataset)
    method = result.method
    pixels = method.standardize(dataset.data).flatten(1).double().numpy()
    reference = KMeans(n_clusters=3, n_init=10, random_state=0).fit(pixels)
    assert adjusted_rand_score(reference.labels_, result.labels) == 1.0
    # Same centers up to the order of the clusters.
    order = [int(np.argmin(((reference.cluster_centers_ - c) ** 2).sum(1))) for c in method.centers.numpy()]
    assert sorted(order) == [0, 1, 2]
    assert np.allclose(method.centers.numpy(), reference.cluster_centers_[order], atol=1e-4)
    # The prediction is the nearest center.
    x = method.standardize(dataset.data[:10])
    distances = torch.cdist(x.flatten(1), method.centers) ** 2
    assert torch.equal(method.cluster_logits(x).argmax(1), distances.argmin(1))


def test_kmeans_on_feature_vectors_and_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(loc, 0.3, size=(30, 4)) for loc in (-3.0, 0.0, 3.0)]).astype(np.float32)
    dataset = dataset_from_array(features)
    dataset.labels = np.repeat(np.arange(3), 30)
    result = fit(dataset, tmp_path=prepare_output_folder(tmp_path / "run"))
    assert result.metrics["acc"] == 1.0
    method, _ = load_trained(tmp_path / "run" / "model.pt", device="cpu")
    assert torch.equal(method.centers, result.method.centers)
    assert np.array_equal(method.predict_proba(dataset.data).argmax(1).numpy(), result.labels)

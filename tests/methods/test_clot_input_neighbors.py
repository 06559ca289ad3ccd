"""CLOT's neighbor_source=input: the second view is a neighbour among the inputs themselves (frozen
features), found once before training (or handed over by the trainer from a cached kNN graph)."""

import numpy as np
import pytest
import torch

from otclust import OTClust
from otclust.config import FitConfig
from otclust.data import ImageDataset
from otclust.engine import Trainer
from otclust.errors import UserError


def blob_features(n_per=30, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 3
    return np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)


def test_neighbours_are_the_inputs_own_and_are_never_mined_again():
    from sklearn.neighbors import NearestNeighbors

    x = blob_features()
    model = OTClust(n_clusters=3, epochs=3, batch_size=30, device="cpu", params={"neighbors": 4, "neighbor_source": "input"}).fit(x)
    expected = NearestNeighbors(n_neighbors=5, metric="cosine").fit(x).kneighbors(x, return_distance=False)[:, 1:]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    got = model.model_.neighbor_index.cpu().numpy()
    rows = np.arange(len(x))[:, None]
    assert np.allclose((unit[rows] * unit[got]).sum(-1), (unit[rows] * unit[expected]).sum(-1), atol=1e-5)


def test_a_graph_given_to_the_trainer_is_used_as_it_is():
    x = torch.from_numpy(blob_features())
    given = torch.stack([torch.roll(torch.arange(len(x)), -s) for s in (1, 2, 3)], dim=1)  # not the true neighbours
    config = FitConfig(data="array", clusters=3, epochs=2, batch_size=30, device="cpu", params={"neighbors": 2, "neighbor_source": "input"}, readout="head")
    trainer = Trainer(config, progress=False, log=lambda message: None)
    trainer.input_neighbors = given
    result = trainer.fit(ImageDataset(x, None, "x"))
    assert torch.equal(result.method.neighbor_index.cpu(), given[:, :2])


def test_input_neighbours_need_feature_vectors(blob_images):
    images, _ = blob_images
    with pytest.raises(UserError, match="neighbor_source=input needs feature vectors"):
        OTClust(n_clusters=3, epochs=1, device="cpu", params={"neighbors": 3, "neighbor_source": "input"}).fit(images)
    with pytest.raises(UserError, match="neighbor_source"):
        OTClust(n_clusters=3, epochs=1, device="cpu", params={"neighbor_source": "pixels"}).fit(blob_features())

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from otclust.readout import nearest_neighbors, smooth_over_neighbors


def test_smoothing_over_neighbours_equals_powers_of_the_dense_walk_matrix():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(30, 4, generator=g, dtype=torch.float64)
    index = torch.randint(30, (30, 6), generator=g)
    walk = np.zeros((30, 30))
    for row, cols in enumerate(index.numpy()):
        for col in cols:
            walk[row, col] += 1 / 6  # a neighbour listed twice counts twice
    expected = np.linalg.matrix_power(0.5 * np.eye(30) + 0.5 * walk, 4) @ features.numpy()
    np.testing.assert_allclose(smooth_over_neighbors(features, index, 4).numpy(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(smooth_over_neighbors(features, index, 0), features.float())


def test_nearest_neighbors_match_scikit_learn_cosine_neighbours():
    features = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    ours = nearest_neighbors(features, 5, chunk=64).numpy()  # several chunks
    reference = NearestNeighbors(n_neighbors=6, metric="cosine", algorithm="brute").fit(features.numpy()).kneighbors(return_distance=False)
    np.testing.assert_array_equal(ours, reference[:, :5])
    assert not (ours == np.arange(300)[:, None]).any()  # a sample is never its own neighbour

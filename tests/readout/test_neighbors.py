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


def test_a_bfloat16_coarse_pass_still_returns_the_exact_neighbours_in_exact_order():
    features = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    ours = nearest_neighbors(features, 5, chunk=64, search_dtype=torch.bfloat16).numpy()
    reference = NearestNeighbors(n_neighbors=6, metric="cosine", algorithm="brute").fit(features.numpy()).kneighbors(return_distance=False)
    np.testing.assert_array_equal(ours, reference[:, :5])


def test_on_near_duplicates_a_bfloat16_coarse_pass_loses_at_most_its_rounding():
    # 2,000 points in 20 tight clusters: hundreds of candidates within bfloat16's rounding of each
    # other, the case where its order is blurred. The exact re-ranking keeps each row sorted by
    # float32 similarity, and what it returns is within that rounding of the true neighbours.
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(20, 32, generator=g)
    features = centres[torch.arange(2000) % 20] + 0.05 * torch.randn(2000, 32, generator=g)
    k = 10
    exact = nearest_neighbors(features, k)
    coarse = nearest_neighbors(features, k, search_dtype=torch.bfloat16)
    unit = torch.nn.functional.normalize(features, dim=1)

    def similarity(index):
        return torch.einsum("nd,nkd->nk", unit, unit[index])

    got, best = similarity(coarse), similarity(exact)
    assert (got[:, :-1] >= got[:, 1:] - 1e-6).all()  # nearest first, by exact similarity
    assert (coarse != torch.arange(2000)[:, None]).all()
    assert (got >= best[:, -1:] - 0.01).all()
    shared = np.mean([len(set(a) & set(b)) / k for a, b in zip(coarse.tolist(), exact.tolist())])
    assert shared > 0.5

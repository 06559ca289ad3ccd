import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import NearestNeighbors

from otclust.readout import nearest_neighbors, smooth_over_neighbors


def _scikit_learn_neighbours(features, k):
    """The exact k cosine neighbours of each row, nearest first (kneighbors() without X leaves each row out)."""
    return NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(features.numpy()).kneighbors(return_distance=False)


def _clusters(n, centres, dim, spread, seed):
    """n points around `centres` random centres (round robin), Gaussian noise of std `spread`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(centres, dim, generator=g)[torch.arange(n) % centres] + spread * torch.randn(n, dim, generator=g)


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
    np.testing.assert_array_equal(ours, _scikit_learn_neighbours(features, 5))
    assert not (ours == np.arange(300)[:, None]).any()  # a sample is never its own neighbour


def test_a_bfloat16_coarse_pass_still_returns_the_exact_neighbours_in_exact_order():
    features = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    ours = nearest_neighbors(features, 5, chunk=64, search_dtype=torch.bfloat16).numpy()
    np.testing.assert_array_equal(ours, _scikit_learn_neighbours(features, 5))


def test_on_near_duplicates_a_bfloat16_coarse_pass_loses_at_most_its_rounding():
    # 2,000 points in 20 tight clusters: hundreds of candidates within bfloat16's rounding of each
    # other, the case where its order is blurred. The exact re-ranking keeps each row sorted by
    # float32 similarity, and what it returns is within that rounding of the true neighbours.
    features = _clusters(2000, 20, 32, 0.05, seed=1)
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


def _exact_similarities(features, index):
    unit = torch.nn.functional.normalize(features, dim=1)
    return torch.einsum("nd,nkd->nk", unit, unit[index])


def test_searching_by_cells_with_every_cell_probed_is_the_exact_search():
    features = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    ours = nearest_neighbors(features, 5, cells=20, probes=20).numpy()
    np.testing.assert_array_equal(ours, _scikit_learn_neighbours(features, 5))


def test_searching_by_cells_keeps_almost_every_neighbour_of_clustered_features():
    # 4,000 points around 40 overlapping clusters, as trained features lie: 8 of 63 cells probed.
    features = _clusters(4000, 40, 32, 1.0, seed=3)
    exact = nearest_neighbors(features, 10, cells=0)
    ours = nearest_neighbors(features, 10, cells=63, probes=8)
    recall = (ours[:, :, None] == exact[:, None, :]).any(-1).float().mean()
    assert recall > 0.98
    assert not torch.equal(ours, exact)  # it did not search everything
    got = _exact_similarities(features, ours)
    assert (got[:, :-1] >= got[:, 1:] - 1e-6).all()  # nearest first
    assert (ours != torch.arange(4000)[:, None]).all()


def test_rows_whose_probed_cells_hold_too_few_rows_are_searched_by_brute_force():
    # one probe of as many cells as rows: a row's own cell holds about one row, too few for k = 5
    features = torch.randn(60, 8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(nearest_neighbors(features, 5, cells=60, probes=1), nearest_neighbors(features, 5, cells=0))


def test_large_feature_sets_are_searched_by_cells_small_ones_by_brute_force(monkeypatch):
    from otclust.readout import neighbors

    calls = []
    monkeypatch.setattr(neighbors, "CELLS_FROM", 500)
    monkeypatch.setattr(neighbors, "_search_by_cells", lambda unit, k, cells, *rest: calls.append(cells) or torch.zeros(len(unit), k, dtype=torch.long))
    nearest_neighbors(torch.randn(499, 4), 3)
    assert calls == []
    nearest_neighbors(torch.randn(900, 4), 3)
    assert calls == [30]  # sqrt(N) cells


def test_search_cells_names_the_cells_of_each_search_kind():
    import pytest

    from otclust.readout.neighbors import search_cells

    assert search_cells(70_000, "exact") == 0
    assert search_cells(70_000, "auto", cells_from=200_000) == 0
    assert search_cells(70_000, "auto", cells_from=50_000) == round(70_000**0.5) == 265
    assert search_cells(100, "cells") == 10
    with pytest.raises(ValueError, match="search must be one of"):
        search_cells(100, "approximate")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 120), k=st.integers(1, 12), cells=st.integers(2, 30), probes=st.integers(1, 30), seed=st.integers(0, 2**16), duplicates=st.booleans())
def test_search_by_cells_returns_k_distinct_other_rows_never_closer_than_the_exact_ones(n, k, cells, probes, seed, duplicates):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 5, generator=g)
    if duplicates:  # repeated rows: cells that empty, ties everywhere
        features = features[torch.randint(3, (n,), generator=g)]
    ours = nearest_neighbors(features, k, cells=cells, probes=probes)
    exact = nearest_neighbors(features, k, cells=0)
    k = min(k, n - 1)
    assert ours.shape == (n, k)
    assert (ours != torch.arange(n)[:, None]).all()
    assert all(len(set(row)) == k for row in ours.tolist())
    got, best = _exact_similarities(features, ours), _exact_similarities(features, exact)
    # the i-th nearest among the rows searched is never nearer than the i-th nearest of all
    assert (got <= best + 1e-5).all()
    if probes >= min(cells, n):
        torch.testing.assert_close(got, best, atol=1e-5, rtol=0)


def test_the_search_benchmark_prints_its_table(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import knn_search as bench

    g = torch.Generator().manual_seed(0)
    features = torch.randn(30, 16, generator=g)[torch.arange(900) % 30] + 0.5 * torch.randn(900, 16, generator=g)
    np.save(tmp_path / "f.npy", features.numpy())
    bench.main(["--features", str(tmp_path / "f.npy"), "--probes", "2,30", "--no-faiss"])
    rows = {line.split("|")[1].strip(): line.split("|")[2:5] for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"search", "brute force, float32 (exact)", "brute force, bfloat16 + re-rank", "cells, 2 probes", "cells, 30 probes"}
    assert float(rows["brute force, float32 (exact)"][1]) == 1.0
    assert float(rows["cells, 30 probes"][1]) == 1.0  # every cell probed: exact
    assert 0.5 < float(rows["cells, 2 probes"][1]) < 1.0

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from otclust.choose_k import CRITERIA, choose_k, close_calls, eigengap_curve, parse_clusters, pick_k, smoothed_features, stability_curve
from otclust.errors import UserError


def _blobs(k, seed):
    sizes = [int(s) for s in np.linspace(120, 40, k)]  # unequal sizes
    x, _ = make_blobs(n_samples=sizes, n_features=8, cluster_std=1.0, center_box=(-20, 20), random_state=seed)
    return x


@pytest.mark.parametrize("k", [3, 5, 8])
def test_stability_finds_k_on_well_separated_blobs(k):
    chosen, curve = choose_k(_blobs(k, seed=k), k_min=2, k_max=10, seed=0)
    assert chosen == k
    assert sorted(curve) == list(range(2, 11))  # one value per K
    assert all(np.isfinite(v) and -1 <= v <= 1 for v in curve.values())


@pytest.mark.parametrize("k", [3, 5, 8])
def test_eigengap_finds_k_on_well_separated_blobs(k):
    chosen, curve = choose_k(_blobs(k, seed=k), k_min=2, k_max=10, seed=0, criterion="eigengap")
    assert chosen == k
    assert sorted(curve) == list(range(2, 11))


def _knn_laplacian_reference(x, neighbors):
    """Independent reference: scikit-learn's kNN graph (cosine), made symmetric, and scipy's
    normalised Laplacian, all eigenvalues by a dense float64 solver."""
    from scipy.sparse.csgraph import laplacian
    from sklearn.neighbors import kneighbors_graph

    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    graph = kneighbors_graph(unit, neighbors, include_self=False)
    graph = ((graph + graph.T) > 0).astype(np.float64)
    return np.linalg.eigvalsh(laplacian(graph, normed=True).toarray())


@pytest.mark.parametrize("n", [300, 1500])  # dense path and the sparse eigsh path
def test_eigengap_matches_a_dense_laplacian_reference(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 6)) + np.repeat(rng.normal(scale=3, size=(4, 6)), n // 4, axis=0)
    curve = eigengap_curve(x, range(2, 9), neighbors=7)
    reference = _knn_laplacian_reference(x, 7)
    expected = {k: reference[k] - reference[k - 1] for k in range(2, 9)}
    assert curve == pytest.approx(expected, abs=1e-6)


def test_eigengap_counts_disconnected_groups_and_reuses_a_given_neighbour_graph():
    # Three far-apart groups: the 5-NN graph has three components, so three zero eigenvalues.
    x = np.concatenate([np.eye(3)[g] * 10 + np.random.default_rng(g).normal(scale=0.01, size=(40, 3)) for g in range(3)])
    curve = eigengap_curve(x, range(2, 6), neighbors=5)
    assert pick_k("eigengap", curve) == 3 and curve[2] < 1e-9 < curve[3]
    import torch

    # A given graph is used as it is: here each point's neighbours are the next 5 of its group.
    index = torch.as_tensor([[i // 40 * 40 + (i + j) % 40 for j in range(1, 6)] for i in range(120)])
    assert eigengap_curve(x, range(2, 6), neighbor_index=index) != curve
    assert pick_k("eigengap", eigengap_curve(x, range(2, 6), neighbor_index=index)) == 3


@pytest.mark.parametrize("criterion", ["silhouette", "calinski_harabasz", "davies_bouldin"])
def test_baselines_run_and_give_one_value_per_k(criterion):
    chosen, curve = choose_k(_blobs(4, seed=0), k_min=2, k_max=7, seed=0, criterion=criterion)
    assert sorted(curve) == list(range(2, 8))
    assert chosen == 4


def test_stability_is_high_at_the_true_k_and_low_when_a_cluster_must_be_cut():
    points = smoothed_features(_blobs(3, seed=1))
    curve = stability_curve(points, [3, 4], seed=0)
    assert curve[3] > 0.99
    assert curve[4] < 0.95


def test_the_largest_k_near_the_top_is_chosen_not_the_argmax():
    # A coarse, equally stable structure at K = 2 must not win over the true K = 5.
    assert pick_k("stability", {2: 1.0, 3: 0.8, 4: 0.9, 5: 0.99, 6: 0.7}) == 5
    assert pick_k("davies_bouldin", {2: 1.0, 3: 0.5, 4: 0.7}) == 3
    assert pick_k("silhouette", {2: 0.1, 3: 0.5, 4: 0.7}) == 4


def test_close_calls_are_the_other_k_within_the_tolerance_of_the_best():
    curve = {2: 1.0, 3: 0.8, 4: 0.985, 5: 0.99, 6: 0.7}
    assert close_calls("stability", curve, pick_k("stability", curve)) == [2, 4]
    assert close_calls("stability", curve, 2, tolerance=0.001) == []
    assert close_calls("silhouette", curve, 2) == []  # only stability reads a band of ties


def test_parse_clusters():
    assert parse_clusters("7") == 7
    assert parse_clusters("auto") == (2, 15)
    assert parse_clusters("auto:3-20") == (3, 20)
    for bad in ("auto:5-3", "auto:1-4", "auto:", "many", "0"):
        with pytest.raises(UserError):
            parse_clusters(bad)


def test_bad_ranges_and_criteria_are_user_errors():
    x = _blobs(3, seed=0)
    with pytest.raises(UserError, match="k_min"):
        choose_k(x, k_min=1, k_max=4)
    with pytest.raises(UserError, match="at most 3"):  # 80% of 5 samples hold 4 points: K up to 3
        choose_k(x[:5], k_min=2, k_max=5, smooth_rounds=0)
    with pytest.raises(UserError, match="criterion"):
        choose_k(x, criterion="elbow")
    assert "stability" in CRITERIA


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(features=np.arange(30.0)), "N x D array"),
        (dict(tolerance=-1), "tolerance must be"),
        (dict(smooth_neighbors=0), "smooth_neighbors must be"),
        (dict(seed=-1), "seed must be a whole number of 0 or more"),
        (dict(k_min=2.0), "whole numbers 2 <= k_min <= k_max"),
        (dict(k_max="5"), "whole numbers 2 <= k_min <= k_max"),
        (dict(features=np.where(np.eye(60, 4) > 0, np.nan, 1.0)), "NaN or infinite"),
        (dict(features=np.ones((60, 4)) * np.inf), "NaN or infinite"),
        (dict(features=_blobs(3, seed=0) + 1j), "complex"),
    ],
)
def test_bad_arguments_are_user_errors_not_library_tracebacks(arguments, message):
    arguments = {"features": _blobs(3, seed=0), "k_min": 2, "k_max": 5, **arguments}
    with pytest.raises(UserError, match=message):
        choose_k(**arguments)


@pytest.mark.parametrize("criterion", ["stability", "silhouette", "eigengap"])
def test_degenerate_data_is_refused_instead_of_returning_k_max(criterion):
    # All points equal, or three distinct ones: every K up to k_max used to look perfectly stable.
    with pytest.raises(UserError, match="all 30 samples are the same point"):
        choose_k(np.ones((30, 4)), 2, 5, criterion=criterion)
    with pytest.raises(UserError, match="only 3 distinct points .* k_max must be at most 3"):
        choose_k(np.repeat(_blobs(3, seed=0)[:3], 10, axis=0), 2, 5, criterion=criterion)
    with pytest.raises(UserError, match="at least 2 features"):  # one unit-normalised feature is its sign
        choose_k(_blobs(3, seed=0)[:, :1], 2, 5, criterion=criterion)


def test_too_few_samples_says_how_many_are_needed():
    for n in (0, 2):
        with pytest.raises(UserError, match=f"needs at least 7 samples .* got {n}: pass more samples$"):
            choose_k(np.random.default_rng(0).normal(size=(n, 4)), 2, 5)
    assert choose_k(np.random.default_rng(0).normal(size=(7, 4)), 2, 5, smooth_rounds=0)[0] in range(2, 6)  # 7 is enough

import numpy as np
import pytest
import torch

from otclust.readout import estimate_sizes_from_features, size_update_epochs
from otclust.readout.kmeans import kmeans_restarts


def test_feature_size_estimate_recovers_unequal_cluster_sizes():
    g = torch.Generator().manual_seed(0)
    counts = [240, 120, 40]
    centers = torch.eye(8)[:3] * 10
    features = torch.cat([c + torch.randn(n, 8, generator=g) for c, n in zip(centers, counts)])
    sizes = estimate_sizes_from_features(features, 3, seed=0).sizes
    torch.testing.assert_close(sizes, torch.tensor([0.6, 0.3, 0.1]))  # largest first, above the 0.2/K floor
    # a cluster smaller than the floor (12 of 252 points, floor 0.2/K = 0.1) is held at the floor
    tiny = estimate_sizes_from_features(torch.cat([features[:240], features[-12:]]), 2, seed=0).sizes
    torch.testing.assert_close(tiny, torch.tensor([240 / 252, 0.1]) / (240 / 252 + 0.1))


def test_size_updates_are_spread_over_training_and_skip_the_untrained_first_epoch():
    assert size_update_epochs(300, 9) == set(range(30, 300, 30))
    assert size_update_epochs(10, 3) == {2, 5, 8}
    assert size_update_epochs(1, 9) == set()


def _blobs(counts, spread=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(8)[: len(counts)] * 10
    return torch.cat([c + spread * torch.randn(n, 8, generator=g) for c, n in zip(centers, counts)])


def test_equal_size_excess_matches_an_exact_assignment_with_equal_sizes():
    """Reference: the exact cheapest assignment of the points to each end's centres with equal
    sizes (each centre copied N/K times, scipy's Hungarian solver), against the entropic OT cost."""
    from scipy.optimize import linear_sum_assignment

    from otclust.readout.kmeans import equal_size_excess

    points = _blobs([30, 20, 10], spread=3.0).double()
    ends = kmeans_restarts(points, 3, seed=0, n_restarts=5)
    excess, free, _ = equal_size_excess(points, ends, 3, refit=0)  # the centres as k-means left them
    exact = []
    for end in ends:
        cost = torch.cdist(points, end.centers.double()).pow(2).numpy()
        rows, cols = linear_sum_assignment(np.repeat(cost, len(points) // 3, axis=1))
        exact.append(cost[rows, cols // (len(points) // 3)].mean())
    inertia = free.inertia / len(points)
    reference = (min(exact) - inertia) / inertia
    assert reference > 0.3  # 30/20/10 points cannot be split 20/20/20 for free
    assert excess == pytest.approx(reference, rel=0.05, abs=0.01)


def test_equal_sizes_are_kept_unless_they_cost_enough():
    balanced = estimate_sizes_from_features(_blobs([100, 100, 100]), 3, seed=0, min_excess=0.2)
    assert balanced.excess < 0.05 and balanced.kept_equal
    torch.testing.assert_close(balanced.sizes, torch.full((3,), 1 / 3))
    unequal = _blobs([240, 120, 40])
    estimated = estimate_sizes_from_features(unequal, 3, seed=0, min_excess=0.2)
    assert estimated.excess > 1.0 and not estimated.kept_equal
    torch.testing.assert_close(estimated.sizes, torch.tensor([0.6, 0.3, 0.1]))
    # the same points with a threshold above their excess: equal sizes
    assert estimate_sizes_from_features(unequal, 3, seed=0, min_excess=estimated.excess + 0.1).kept_equal


def test_the_readout_under_unknown_sizes_takes_the_equal_size_restart_below_the_threshold(monkeypatch):
    import importlib

    kmeans_module = importlib.import_module("otclust.readout.kmeans")  # the package exports a function of that name
    points = _blobs([100, 100, 100])
    free, equal = kmeans_restarts(points, 3, seed=0, n_restarts=2)
    monkeypatch.setattr(kmeans_module, "equal_size_excess", lambda points, ends, k, **kwargs: (0.3, free, equal))
    assert kmeans_module.choose_kmeans_restart(points, 3, 0, 2, "unknown", min_excess=0.5) is equal
    assert kmeans_module.choose_kmeans_restart(points, 3, 0, 2, "unknown", min_excess=0.2) is free


def test_refitting_the_equal_size_centres_lowers_the_excess():
    """Centres k-means placed for 30/20/10 points overstate what a 20/20/20 split costs; the
    size-constrained Lloyd steps move them and find it cheaper."""
    from otclust.readout.kmeans import equal_size_excess

    points = _blobs([30, 20, 10], spread=3.0).double()
    ends = kmeans_restarts(points, 3, seed=0, n_restarts=5)
    refitted, fixed = equal_size_excess(points, ends, 3)[0], equal_size_excess(points, ends, 3, refit=0)[0]
    assert fixed > 0.25 and refitted < 0.6 * fixed


def test_sizes_are_not_judged_by_default_and_cost_no_equal_size_solve(monkeypatch):
    import importlib

    kmeans_module = importlib.import_module("otclust.readout.kmeans")

    def refuse(*args, **kwargs):
        raise AssertionError("equal_size_excess ran although min_excess is 0")

    # Both the size estimate and the read-out judge sizes through judge_equal_sizes, which looks
    # the function up in this module.
    monkeypatch.setattr(kmeans_module, "equal_size_excess", refuse)
    points = _blobs([240, 120, 40])
    estimate = estimate_sizes_from_features(points, 3, seed=0)
    assert estimate.excess is None and not estimate.kept_equal
    torch.testing.assert_close(estimate.sizes, torch.tensor([0.6, 0.3, 0.1]))
    chosen = kmeans_module.choose_kmeans_restart(points, 3, 0, 3, "unknown")
    assert chosen.inertia == min(end.inertia for end in kmeans_restarts(points, 3, 0, 3))


def test_the_refit_on_a_sample_of_the_points_gives_about_the_same_excess():
    from otclust.readout.kmeans import equal_size_excess

    points = _blobs([600, 400, 200])
    ends = kmeans_restarts(points, 3, seed=0, n_restarts=5)
    whole = equal_size_excess(points, ends, 3)[0]
    sampled = equal_size_excess(points, ends, 3, max_points=400, seed=1)[0]
    assert whole > 0.3 and sampled == pytest.approx(whole, rel=0.15)

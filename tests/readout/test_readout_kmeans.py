import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from otclust.readout import choose_kmeans_restart, kmeans, kmeans_from_partition, kmeans_restarts


def test_kmeans_restarts_report_each_end_point_as_scikit_learn_would():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 1.0, size=(40, 3)) for c in (0, 3, 6, 9)])
    ends = kmeans_restarts(x, 4, seed=0, n_restarts=7)
    assert len(ends) == 7
    for end in ends:
        distances = ((x[:, None, :] - end.centers.double().numpy()[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(end.labels, distances.argmin(1))
        assert end.inertia == pytest.approx(distances.min(1).sum(), rel=1e-5)
    # independent restarts, not one repeated: they reach the same partition with centres in other orders
    assert len({tuple(end.labels[::40]) for end in ends}) > 1
    best = min(end.inertia for end in ends)
    assert best == pytest.approx(KMeans(4, n_init=7, random_state=0).fit(x).inertia_, rel=0.05)


def test_kmeans_from_given_centres_moves_an_empty_one_into_the_data():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 2, generator=g) * 0.3 + torch.tensor([3.0, 0.0]), torch.randn(30, 2, generator=g) * 0.3 - torch.tensor([3.0, 0.0])])
    start = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [100.0, 100.0]])  # the third is empty after one assignment
    end = kmeans(x, 3, seed=0, init=start, max_iter=5)
    assert (np.bincount(end.labels, minlength=3) > 0).all()
    assert end.centers.abs().max() < 10


@pytest.mark.parametrize("choice, separated", [("prior", True), ("inertia", False)])
def test_restart_choice_under_equal_sizes_keeps_the_balanced_partition(choice, separated):
    """Two tight blobs and a long line: the lowest plain inertia merges the blobs and splits the
    line; under equal cluster sizes the restart that separates all three wins."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100, 2, generator=g) * 0.05, torch.randn(100, 2, generator=g) * 0.05 + torch.tensor([4.0, 0.0])])
    x = torch.cat([x, torch.stack([30 + 20 * torch.rand(100, generator=g), torch.zeros(100)], dim=1)])
    truth = np.repeat([0, 1, 2], 100)
    chosen = choose_kmeans_restart(x, 3, seed=0, restarts=30, choice=choice)
    assert (adjusted_rand_score(truth, chosen.labels) == 1.0) == separated


def _blobs_and_line():
    """Two tight blobs and a long line (the test above): equal sizes want all three apart, the
    lowest plain inertia merges the blobs and splits the line."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100, 2, generator=g) * 0.05, torch.randn(100, 2, generator=g) * 0.05 + torch.tensor([4.0, 0.0])])
    return torch.cat([x, torch.stack([30 + 20 * torch.rand(100, generator=g), torch.zeros(100)], dim=1)]), np.repeat([0, 1, 2], 100)


def test_kmeans_from_a_partition_starts_at_its_means_as_scikit_learn_would():
    x, truth = _blobs_and_line()
    labels = truth.copy()
    labels[:10] = 1  # a few points of the first blob given to the second
    means = np.stack([x.double().numpy()[labels == k].mean(0) for k in range(3)])
    reference = KMeans(3, init=means, n_init=1).fit(x.double().numpy())
    end = kmeans_from_partition(x, labels, 3, seed=0)
    np.testing.assert_array_equal(end.labels, reference.labels_)
    np.testing.assert_allclose(end.centers.numpy(), reference.cluster_centers_, rtol=1e-5, atol=1e-6)
    assert kmeans_from_partition(x, np.minimum(truth, 1), 3, seed=0) is None  # no point in part 2: nothing to start it from


@pytest.mark.parametrize("seed", [1, 3, 5])
def test_a_start_partition_is_one_more_candidate_judged_like_the_restarts(seed):
    """With 3 restarts these seeds all end in the merged partition; a start from a partition that
    confuses 20 points of the two blobs (as a network head might) reaches the separated one, which
    wins under equal sizes but not by plain inertia: the start is judged, not taken."""
    x, truth = _blobs_and_line()
    start = truth.copy()
    rng = np.random.default_rng(0)
    start[rng.choice(200, 20, replace=False)] = rng.integers(0, 2, 20)
    assert adjusted_rand_score(truth, choose_kmeans_restart(x, 3, seed=seed, restarts=3).labels) < 1.0
    assert adjusted_rand_score(truth, choose_kmeans_restart(x, 3, seed=seed, restarts=3, start_labels=start).labels) == 1.0
    plain = choose_kmeans_restart(x, 3, seed=seed, restarts=3, choice="inertia", start_labels=start)
    assert adjusted_rand_score(truth, plain.labels) < 1.0
    assert choose_kmeans_restart(x, 3, seed=seed, restarts=3, start_labels=np.zeros(300, dtype=int)).labels is not None  # empty parts: no candidate, no error


def test_restart_choice_matches_known_sizes_to_clusters():
    """Known unequal sizes, given in any order: the restart whose clusters fit them wins."""
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(150, 2, generator=g) * 0.05, torch.randn(50, 2, generator=g) * 0.05 + torch.tensor([4.0, 0.0])])
    x = torch.cat([x, torch.stack([30 + 20 * torch.rand(100, generator=g), torch.zeros(100)], dim=1)])
    truth = np.repeat([0, 1, 2], [150, 50, 100])
    sizes = torch.tensor([100.0, 150.0, 50.0]) / 300  # shuffled relative to the clusters
    assert adjusted_rand_score(truth, choose_kmeans_restart(x, 3, seed=0, restarts=30, sizes=sizes).labels) == 1.0
    assert adjusted_rand_score(truth, choose_kmeans_restart(x, 3, seed=0, restarts=30, choice="inertia").labels) < 1.0


def test_restarts_that_number_one_partition_differently_are_one_partition():
    from otclust.readout.kmeans import _partition_key

    labels = np.array([2, 2, 0, 1, 0, 1])
    assert _partition_key(labels) == _partition_key(np.array([0, 0, 1, 2, 1, 2]))  # renumbered
    assert _partition_key(labels) != _partition_key(np.array([2, 0, 0, 1, 0, 1]))  # one point moved


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("known", [False, True])
def test_skipping_restarts_whose_plain_inertia_cannot_win_keeps_the_same_choice(seed, known):
    """The restart choice skips OT solves once the plain inertia passes the best cost found; it
    must keep exactly the restart a solve of every distinct partition keeps (each partition
    represented by its first restart: under known sizes with clusters of equal mass, the
    matching of sizes to clusters, and so the cost, follows the restart's cluster numbering)."""
    from otclust.ot import size_constrained_inertia
    from otclust.ot.priors import match_prior_to_mass
    from otclust.readout.kmeans import _partition_key

    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(120, 2, generator=g) * 0.3 + torch.tensor(c) for c in ([0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [5.0, 5.0])])
    x = torch.cat([x, torch.stack([8 + 6 * torch.rand(80, generator=g), torch.zeros(80)], dim=1)])
    sizes = torch.tensor([0.1, 0.2, 0.2, 0.2, 0.3]) if known else None
    chosen = choose_kmeans_restart(x, 5, seed=seed, restarts=20, sizes=sizes)
    costs, seen = [], set()
    for end in kmeans_restarts(x, 5, seed, 20):
        if _partition_key(end.labels) in seen:
            continue
        seen.add(_partition_key(end.labels))
        matched = None
        if sizes is not None:
            matched = match_prior_to_mass(sizes.double(), torch.from_numpy(np.bincount(end.labels, minlength=5)).double())
        costs.append((size_constrained_inertia(x, end.centers, matched), end))
    best = min(costs, key=lambda c: c[0])[1]
    assert adjusted_rand_score(best.labels, chosen.labels) == 1.0


def test_fewer_distinct_points_than_clusters_warns_once():
    import warnings

    points = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat(20, 1)  # two distinct points, three clusters asked
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ends = kmeans_restarts(points, 3, seed=0, n_restarts=5)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "only 2 distinct cluster(s) of the 3" in messages[0]
    assert all(len(np.unique(end.labels)) == 2 for end in ends)


def test_the_dual_bound_spares_the_solves_of_partitions_that_cannot_win(monkeypatch):
    """Same choice as with the plain-inertia bound alone, fewer OT solves: on digits many restarts
    end within a hair of the best inertia, in partitions far from equal sizes."""
    import sys

    from sklearn.datasets import load_digits

    kmeans_module = sys.modules["otclust.readout.kmeans"]  # the package exports a function of that name
    x = torch.nn.functional.normalize(torch.tensor(load_digits().data, dtype=torch.float32), dim=1)
    solves, real = [], kmeans_module.size_constrained_inertia
    monkeypatch.setattr(kmeans_module, "size_constrained_inertia", lambda *a, **k: solves.append(1) or real(*a, **k))
    with_bound = choose_kmeans_restart(x, 10, seed=0, restarts=20)
    bounded = len(solves)
    solves.clear()
    monkeypatch.setattr(kmeans_module, "size_constrained_lower_bound", lambda *a, **k: -float("inf"))
    without = choose_kmeans_restart(x, 10, seed=0, restarts=20)
    assert adjusted_rand_score(with_bound.labels, without.labels) == 1.0
    assert bounded < len(solves) / 2


def test_the_readout_speed_benchmark_prints_its_parts_and_keeps_one_partition(capsys):
    """benchmarks/readout_speed.py: every part timed, and the three restart choices (dual bound,
    plain-inertia stop, every partition solved) keep the same partition."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import readout_speed

    readout_speed.main(["--samples", "1500", "--dim", "8", "--clusters", "4"])
    out = capsys.readouterr().out
    for part in ("kNN search", "smoothing", "OT solves", "logistic regression", "stopped by the plain inertia only"):
        assert part in out
    assert "the same partition as before: True" in out
    # the benchmark restores the read-out's functions it wraps
    kmeans_module = sys.modules["otclust.readout.kmeans"]
    assert kmeans_module.size_constrained_lower_bound.__module__ == "otclust.ot.kmeans_loss"
    assert kmeans_module.size_constrained_inertia.__module__ == "otclust.ot.kmeans_loss"

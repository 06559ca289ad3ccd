"""Property tests: the clustering metrics do not depend on how clusters (or classes) are named,
and agree with independent computations (scikit-learn, scipy's assignment on sklearn's
contingency table, brute force over permutations)."""

from itertools import permutations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from otclust.metrics import cluster_accuracy, evaluate_clustering, hungarian_mapping, matched_confusion_matrix


@st.composite
def labellings(draw, max_n=60, max_labels=6):
    n = draw(st.integers(1, max_n))
    n_classes = draw(st.integers(1, max_labels))
    n_clusters = draw(st.integers(1, max_labels))
    true = draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n))
    pred = draw(st.lists(st.integers(0, n_clusters - 1), min_size=n, max_size=n))
    return np.array(true), np.array(pred)


def renamed(labels, seed):
    """The same partition under other, non-contiguous and possibly negative, ids."""
    rng = np.random.default_rng(seed)
    ids = np.unique(labels)
    new_ids = rng.choice(np.arange(-50, 50), size=len(ids), replace=False)
    return new_ids[np.searchsorted(ids, labels)]


def reference_accuracy(true, pred):
    table = contingency_matrix(true, pred)  # sklearn's: rows classes, columns clusters
    rows, cols = linear_sum_assignment(-table)
    return table[rows, cols].sum() / len(true)


@settings(max_examples=150, deadline=None)
@given(labellings(), st.integers(0, 2**31 - 1))
def test_scores_are_invariant_to_renaming_clusters_and_classes(labelling, seed):
    true, pred = labelling
    scores = evaluate_clustering(true, pred)
    assert evaluate_clustering(true, renamed(pred, seed)) == pytest.approx(scores, abs=1e-12)
    assert evaluate_clustering(renamed(true, seed + 1), pred) == pytest.approx(scores, abs=1e-12)
    # Symmetric in its arguments: the matching pairs clusters with classes either way round.
    assert cluster_accuracy(pred, true) == pytest.approx(scores["acc"], abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(labellings())
def test_scores_agree_with_scikit_learn_and_scipy(labelling):
    true, pred = labelling
    scores = evaluate_clustering(true, pred)
    assert scores["acc"] == pytest.approx(reference_accuracy(true, pred), abs=1e-12)
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(true, pred), abs=1e-12)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(true, pred), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(labellings(max_n=30, max_labels=4))
def test_accuracy_is_the_best_one_to_one_matching_by_brute_force(labelling):
    true, pred = labelling
    clusters, classes = np.unique(pred), np.unique(true)
    best = 0
    # Every injective map of the smaller side into the larger one.
    if len(clusters) <= len(classes):
        for image in permutations(classes, len(clusters)):
            mapping = dict(zip(clusters, image))
            best = max(best, sum(mapping[p] == t for p, t in zip(pred, true)))
    else:
        for image in permutations(clusters, len(classes)):
            mapping = dict(zip(classes, image))
            best = max(best, sum(mapping[t] == p for p, t in zip(pred, true)))
    assert cluster_accuracy(true, pred) == pytest.approx(best / len(true), abs=1e-12)
    # The mapping it reports achieves that accuracy, and so do the matched confusion matrix's
    # entries (on its diagonal when every class has a cluster: rows follow the classes' order).
    mapping = hungarian_mapping(true, pred)
    assert sum(mapping.get(p) == t for p, t in zip(pred, true)) == best
    matrix, order = matched_confusion_matrix(true, pred)
    matched = [list(classes).index(mapping[k]) for k in order if k in mapping]
    assert sum(matrix[row, column] for row, column in enumerate(matched)) == best
    if len(clusters) >= len(classes):
        assert np.trace(matrix) == best

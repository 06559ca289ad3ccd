import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from otclust.metrics import (
    cluster_accuracy,
    contingency,
    evaluate_clustering,
    hungarian_mapping,
    matched_confusion_matrix,
)


def test_accuracy_is_invariant_to_renaming_clusters():
    true = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([2, 2, 0, 0, 1, 1])
    assert cluster_accuracy(true, pred) == 1.0
    assert hungarian_mapping(true, pred) == {2: 0, 0: 1, 1: 2}


def test_accuracy_hand_computed_case():
    # Cluster 0 holds classes {0,0,1}, cluster 1 holds {1,1,0}: best match 0->0, 1->1 gives 4/6.
    true = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 0, 0, 1, 1, 1])
    assert cluster_accuracy(true, pred) == pytest.approx(4 / 6)


def test_accuracy_with_more_clusters_than_classes_counts_unmatched_clusters_as_errors():
    true = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 2, 1, 1, 3])  # clusters 2 and 3 cannot both be matched
    assert cluster_accuracy(true, pred) == pytest.approx(4 / 6)


def test_accuracy_with_fewer_clusters_than_classes():
    true = np.array([0, 1, 2, 0, 1, 2])
    pred = np.array([0, 0, 1, 0, 0, 1])
    # Best: cluster 0 -> class 0 (2 hits) or class 1 (2 hits), cluster 1 -> class 2 (2 hits).
    assert cluster_accuracy(true, pred) == pytest.approx(4 / 6)


def test_accuracy_against_brute_force_over_permutations():
    from itertools import permutations

    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, size=50)
    pred = rng.integers(0, 4, size=50)
    best = max(np.mean(np.array(p)[pred] == true) for p in permutations(range(4)))
    assert cluster_accuracy(true, pred) == pytest.approx(best)


def test_nmi_and_ari_match_scikit_learn():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 5, size=200)
    pred = np.where(rng.random(200) < 0.7, true, rng.integers(0, 5, size=200))
    scores = evaluate_clustering(true, pred)
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(true, pred))
    assert scores["ari"] == pytest.approx(adjusted_rand_score(true, pred))
    assert 0.7 <= scores["acc"] <= 1.0


def test_contingency_and_matched_confusion_matrix():
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([5, 5, 7, 7, 7])
    table = contingency(true, pred)
    assert table.tolist() == [[2, 0, 0], [0, 2, 1]]
    matrix, order = matched_confusion_matrix(true, pred)
    assert order == [5, 7]
    assert matrix.tolist() == [[2, 0, 0], [0, 2, 1]]
    assert np.trace(matrix) / len(true) == pytest.approx(cluster_accuracy(true, pred))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        cluster_accuracy([0, 1], [0])


def test_labels_of_any_kind_score_as_scikit_learn_takes_them():
    """Strings and fractional floats are categories (they were cast to int: 0.2 and 0.7 became one
    class); NaN is refused; the id-returning helpers want integer ids."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from otclust.metrics import evaluate_clustering, hungarian_mapping

    true, pred = [0.2, 0.2, 0.7, 0.7, 0.7], ["b", "b", "a", "a", "b"]
    scores = evaluate_clustering(true, pred)
    assert scores["acc"] == 0.8
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(true, pred)) and scores["ari"] == pytest.approx(adjusted_rand_score(true, pred))
    assert evaluate_clustering([1.0, 1.0, 3.0], [0, 0, 1])["acc"] == 1.0  # whole-number floats are ids
    with pytest.raises(ValueError, match="NaN"):
        evaluate_clustering([0, float("nan"), 1], [0, 0, 1])
    with pytest.raises(ValueError, match="integer class ids"):
        hungarian_mapping([0.2, 0.7], [0, 1])

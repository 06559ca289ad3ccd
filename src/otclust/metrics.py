"""Clustering metrics as the deep-clustering papers report them.

ACC needs a matching between cluster ids and class ids, found with the Hungarian algorithm on the
contingency table. When there are more clusters than classes (over-clustering), the unmatched
clusters count as errors, which is the convention of the DRC/PICA/SCAN evaluation code.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _as_int_array(values, name: str, categories: bool = False) -> np.ndarray:
    """Labels as int64 ids. Integers (and floats that are whole numbers) are kept as they are;
    with `categories`, any other labels (strings, fractional floats) are ids of their sorted
    distinct values, as scikit-learn's metrics take them. Casting fractional floats to int, as
    this did, made 0.2 and 0.7 one class; NaN became a huge negative id."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.dtype.kind in "biu":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} holds NaN or infinite values: give every sample a label")
        if np.all(array == np.round(array)):
            return array.astype(np.int64)
    if array.dtype.kind not in "fUSO" or not categories:
        raise ValueError(f"{name} must be integer class ids, got {array.dtype} values such as {array[:1].tolist()}: encode them, e.g. numpy.unique(labels, return_inverse=True)[1]")
    try:
        return np.unique(array, return_inverse=True)[1].astype(np.int64).reshape(-1)
    except TypeError:
        raise ValueError(f"{name} mixes labels that cannot be compared (e.g. numbers and strings): give one kind") from None


def contingency(labels_true, labels_pred) -> np.ndarray:
    """Count matrix C[k, c] = number of samples in cluster k with class c (rows: clusters)."""
    true = _as_int_array(labels_true, "labels_true")
    pred = _as_int_array(labels_pred, "labels_pred")
    if true.shape != pred.shape:
        raise ValueError(f"labels_true and labels_pred differ in length: {true.shape} vs {pred.shape}")
    _, true_idx = np.unique(true, return_inverse=True)
    _, pred_idx = np.unique(pred, return_inverse=True)
    table = np.zeros((pred_idx.max(initial=-1) + 1, true_idx.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (pred_idx, true_idx), 1)
    return table


def hungarian_mapping(labels_true, labels_pred) -> dict[int, int]:
    """Best one-to-one map from cluster id to class id (maximum number of agreeing samples)."""
    true = _as_int_array(labels_true, "labels_true")
    pred = _as_int_array(labels_pred, "labels_pred")
    classes = np.unique(true)
    clusters = np.unique(pred)
    table = contingency(true, pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {int(clusters[r]): int(classes[c]) for r, c in zip(rows, cols)}


def cluster_accuracy(labels_true, labels_pred) -> float:
    """Fraction of samples whose cluster maps to their class under the best one-to-one matching."""
    true = _as_int_array(labels_true, "labels_true", categories=True)
    pred = _as_int_array(labels_pred, "labels_pred", categories=True)
    if true.size == 0:
        raise ValueError("cannot score an empty labelling")
    table = contingency(true, pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / true.size)


def matched_confusion_matrix(labels_true, labels_pred) -> tuple[np.ndarray, list[int]]:
    """Confusion matrix with clusters re-ordered to their matched classes.

    Returns (matrix, cluster_order): row i is the cluster cluster_order[i]; columns are the
    classes in sorted order. Matched clusters come first in class order, unmatched ones after.
    """
    true = _as_int_array(labels_true, "labels_true")
    pred = _as_int_array(labels_pred, "labels_pred")
    clusters = list(np.unique(pred))
    classes = list(np.unique(true))
    mapping = hungarian_mapping(true, pred)
    by_class = {cls: k for k, cls in mapping.items()}
    order = [by_class[c] for c in classes if c in by_class]
    order += [k for k in clusters if k not in order]
    table = contingency(true, pred)
    return table[[clusters.index(k) for k in order]], [int(k) for k in order]


def evaluate_clustering(labels_true, labels_pred) -> dict[str, float]:
    """ACC, NMI and ARI in [0, 1], the triple every table in the field reports. Labels may be
    any values (strings too), as for scikit-learn's metrics."""
    true = _as_int_array(labels_true, "labels_true", categories=True)
    pred = _as_int_array(labels_pred, "labels_pred", categories=True)
    return {
        "acc": cluster_accuracy(true, pred),
        "nmi": float(normalized_mutual_info_score(true, pred)),
        "ari": float(adjusted_rand_score(true, pred)),
    }

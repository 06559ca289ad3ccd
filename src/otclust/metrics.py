"""Clustering metrics as the deep-clustering papers report them.

ACC needs a matching between cluster ids and class ids, found with the Hungarian algorithm on the
contingency table. When there are more clusters than classes (over-clustering), the unmatched
clusters count as errors, which is the convention of the DRC/PICA/SCAN evaluation code.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _as_int_array(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array.astype(np.int64)


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
    true = _as_int_array(labels_true, "labels_true")
    pred = _as_int_array(labels_pred, "labels_pred")
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
    """ACC, NMI and ARI in [0, 1], the triple every table in the field reports."""
    true = _as_int_array(labels_true, "labels_true")
    pred = _as_int_array(labels_pred, "labels_pred")
    return {
        "acc": cluster_accuracy(true, pred),
        "nmi": float(normalized_mutual_info_score(true, pred)),
        "ari": float(adjusted_rand_score(true, pred)),
    }

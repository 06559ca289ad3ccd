"""Choosing the number of clusters K without labels.

Our criterion, ``stability``: the features are unit-normalised and smoothed over their nearest
neighbours (as CLOT's read-out does before its k-means, a lazy random walk on the kNN graph that
pulls each cluster together); for each K, k-means (one k-means++ restart each) runs on several
random subsamples, each run labels every point by its nearest centre, and the curve is the mean
adjusted Rand index between the runs' labellings. At the true K the runs agree; above it a real
cluster is cut in two at a place that changes from run to run; below it, which clusters merge
changes too, unless the data has a coarser structure that is itself stable (two or three
super-classes), which can score as high as the true K. So the chosen K is the *largest* K whose
stability is within ``tolerance`` of the curve's maximum, not the argmax.

``eigengap`` (a classical criterion for graphs, von Luxburg 2007, section 8.3): the K after which
the eigenvalues of the normalised Laplacian of the features' kNN graph (the read-out's 10
cosine neighbours, unsmoothed) jump most. K loosely joined groups give K eigenvalues near 0.

Baselines on the same smoothed features: the silhouette (highest), the Calinski-Harabasz index (highest)
and the Davies-Bouldin index (lowest) of the best of 10 k-means restarts at each K, from
scikit-learn.
"""

from __future__ import annotations

import itertools
import math
import numbers
import re

import numpy as np
import torch

from otclust.errors import UserError

__all__ = ["CRITERIA", "TOLERANCE", "choose_k", "classical_curves", "close_calls", "eigengap_curve", "kmeans_partitions", "largest_k", "parse_clusters", "pick_k", "smoothed_features", "stability_curve"]

CRITERIA = ("stability", "eigengap", "silhouette", "calinski_harabasz", "davies_bouldin")
# What each criterion's curve plots, for fit's log and the report: legend, axis label, how it chooses.
K_CRITERION_TEXT = {
    "stability": ("stability (mean ARI of subsampled k-means)", "stability", "the largest K within 0.02 of the highest stability: a real cluster split in two splits differently from run to run"),
    "eigengap": ("gap to the next eigenvalue of the kNN graph's Laplacian", "eigengap", "the K with the largest gap: K loosely joined groups give K eigenvalues near 0"),
    "silhouette": ("silhouette of the best of 10 k-means", "silhouette", "the highest silhouette"),
    "calinski_harabasz": ("Calinski-Harabasz index of the best of 10 k-means", "Calinski-Harabasz", "the highest index"),
    "davies_bouldin": ("Davies-Bouldin index of the best of 10 k-means", "Davies-Bouldin", "the lowest index"),
}
DEFAULT_K_RANGE = (2, 15)


def parse_clusters(text: str | int) -> int | tuple[int, int]:
    """--clusters value: a number K, or 'auto' / 'auto:MIN-MAX' -> the (MIN, MAX) range to search."""
    text = str(text).strip()
    if re.fullmatch(r"[-+]?\d+", text):  # -2 too: a number, just too small
        if int(text) < 2:
            raise UserError(f"--clusters must be at least 2, got {text}: give K, or 'auto' to have it chosen")
        return int(text)
    if text == "auto":
        return DEFAULT_K_RANGE
    match = re.fullmatch(r"auto:(\d+)-(\d+)", text)
    if not match:
        raise UserError(f"--clusters '{text}' is neither a number, 'auto', nor 'auto:MIN-MAX' (e.g. auto:2-20)")
    k_min, k_max = int(match.group(1)), int(match.group(2))
    if not 2 <= k_min <= k_max:
        raise UserError(f"--clusters '{text}': need 2 <= MIN <= MAX")
    return k_min, k_max


def smoothed_features(features, neighbors: int = 10, rounds: int = 5) -> np.ndarray:
    """N x D float64: unit features averaged over their `neighbors` nearest neighbours `rounds`
    times and normalised again (rounds = 0: just unit-normalised), as the smoothed read-out does."""
    # Imported here: otclust.readout imports this module.
    from otclust.readout.neighbors import smoothed_unit_features

    x = torch.as_tensor(np.asarray(features, dtype=np.float32)).flatten(1)
    return smoothed_unit_features(x, neighbors, rounds).double().numpy()


def _kmeans(points: np.ndarray, k: int, seed: int, n_init: int):
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=max(1, torch.get_num_threads())):
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed % 2**31).fit(points)


SUBSAMPLE_FRACTION = 0.8  # share of the points each stability run clusters
TOLERANCE = 0.02  # stability this close to the highest counts as a tie (the largest such K is chosen)


def largest_k(n_samples: int) -> int:
    """The largest K that can be chosen among n_samples: each stability run's subsample must hold
    more points than clusters."""
    return int(round(SUBSAMPLE_FRACTION * n_samples)) - 1


def stability_curve(points: np.ndarray, ks, seed: int = 0, runs: int = 10, fraction: float = SUBSAMPLE_FRACTION, max_points: int = 10000) -> dict[int, float]:
    """{K: mean pairwise ARI of `runs` single-restart k-means labellings, each fitted on a random
    `fraction` of the points}. Above max_points, a fixed random subset of that many is used."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(seed)
    if len(points) > max_points:
        points = points[rng.choice(len(points), max_points, replace=False)]
    n_fit = max(2, int(round(fraction * len(points))))
    curve = {}
    for k in ks:
        labellings = []
        for _ in range(runs):
            subset = rng.choice(len(points), n_fit, replace=False)
            labellings.append(_kmeans(points[subset], k, int(rng.integers(2**31 - 1)), n_init=1).predict(points))
        agreements = [adjusted_rand_score(labellings[i], labellings[j]) for i in range(runs) for j in range(i + 1, runs)]
        curve[k] = float(np.mean(agreements))
    return curve


def eigengap_curve(features, ks, neighbors: int = 10, seed: int = 0, max_points: int = 10000, neighbor_index: torch.Tensor | None = None) -> dict[int, float]:
    """{K: lambda_(K+1) - lambda_K}, the gaps between the ascending eigenvalues of the normalised
    Laplacian I - D^-1/2 W D^-1/2 of the kNN graph: each point joined to its `neighbors` most
    cosine-similar others, edges made symmetric, weight 1. `neighbor_index` (N x neighbors, the
    read-out's) saves the search. Above max_points, a fixed random subset of that many is used."""
    from scipy import sparse
    from scipy.sparse.linalg import eigsh

    # Imported here: otclust.readout imports this module.
    from otclust.readout.neighbors import nearest_neighbors

    rng = np.random.default_rng(seed)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32)).flatten(1)
    if neighbor_index is None or len(x) > max_points:
        if len(x) > max_points:
            x = x[np.sort(rng.choice(len(x), max_points, replace=False))]
        neighbor_index = nearest_neighbors(x, neighbors)
    index = neighbor_index.cpu().numpy()
    n, k = index.shape
    count = max(ks) + 1  # lambda_1 .. lambda_(K_max + 1)
    if count > n:
        raise UserError(f"choosing K among {n} samples by the eigengap: k_max must be at most {n - 1}")
    adjacency = sparse.csr_matrix((np.ones(n * k), (np.repeat(np.arange(n), k), index.ravel())), shape=(n, n))
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    scale = sparse.diags(1.0 / np.sqrt(np.asarray(adjacency.sum(axis=1)).ravel()))
    normalised = scale @ adjacency @ scale
    if count >= n - 1 or n <= 1000:
        top = np.linalg.eigvalsh(normalised.toarray())[-count:]
    else:
        # The largest eigenvalues of the normalised adjacency are 1 minus the smallest of the
        # Laplacian; a seeded start vector keeps the result the same from run to run.
        top = eigsh(normalised, k=count, which="LA", v0=rng.standard_normal(n), return_eigenvectors=False)
    laplacian = np.sort(1.0 - np.asarray(top))
    return {kk: float(laplacian[kk] - laplacian[kk - 1]) for kk in ks}


def kmeans_partitions(points: np.ndarray, ks, seed: int = 0) -> dict[int, np.ndarray]:
    """{K: labels of the best of 10 k-means++ restarts}: what the classical criteria score (and
    the read-out a benchmark scores)."""
    return {k: _kmeans(points, k, seed, n_init=10).labels_ for k in ks}


def classical_curves(points: np.ndarray, partitions: dict[int, np.ndarray], seed: int = 0, max_points: int = 10000) -> dict[str, dict[int, float]]:
    """{criterion: {K: value}} of the silhouette (on a sample of at most max_points),
    Calinski-Harabasz and Davies-Bouldin indices of each K's partition."""
    from sklearn import metrics

    sample = min(len(points), max_points)
    curves = {"silhouette": {}, "calinski_harabasz": {}, "davies_bouldin": {}}
    for k, labels in partitions.items():
        curves["silhouette"][k] = float(metrics.silhouette_score(points, labels, sample_size=sample, random_state=seed % 2**31))
        curves["calinski_harabasz"][k] = float(metrics.calinski_harabasz_score(points, labels))
        curves["davies_bouldin"][k] = float(metrics.davies_bouldin_score(points, labels))
    return curves


def _stability_band(curve: dict[int, float], tolerance: float) -> list[int]:
    """The K whose stability is within `tolerance` of the highest, ascending."""
    best = max(curve.values())
    return sorted(k for k, value in curve.items() if value >= best - tolerance)


def pick_k(criterion: str, curve: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The K a criterion's curve chooses (see the module docstring); eigengap: the largest gap."""
    if criterion == "stability":
        return _stability_band(curve, tolerance)[-1]
    if criterion == "davies_bouldin":
        return min(curve, key=curve.get)
    return max(curve, key=curve.get)


def close_calls(criterion: str, curve: dict[int, float], chosen: int, tolerance: float = TOLERANCE) -> list[int]:
    """The other K whose stability is within `tolerance` of the highest: the criterion cannot tell
    them from the chosen one (which of them comes out can change with the criterion's own random
    subsamples, docs/results.md section 5). Empty for the other criteria, which have no such band."""
    if criterion != "stability":
        return []
    return [k for k in _stability_band(curve, tolerance) if k != chosen]


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _samples_needed(k_max: int) -> int:
    """The fewest samples among which K up to k_max can be chosen (largest_k)."""
    return next(n for n in itertools.count(k_max + 1) if largest_k(n) >= k_max)


def _checked_matrix(values, name: str) -> np.ndarray:
    """`values` as a finite real N x D float array (more axes are flattened into D), or a UserError."""
    try:
        array = np.asarray(values)
    except ValueError:  # a ragged nested list
        raise UserError(f"{name} is ragged (its rows have different lengths): pass an N x D array") from None
    if array.dtype.kind == "c":  # numpy would drop the imaginary part with only a warning
        raise UserError(f"{name} holds complex numbers: pass real features (e.g. the real and imaginary parts as separate columns)")
    if array.dtype.kind not in "biuf":
        raise UserError(f"{name} must hold numbers, got an array of dtype {array.dtype}")
    if array.ndim < 2:
        raise UserError(f"{name} must be an N x D array, one row of features per sample; got shape {array.shape}")
    array = array.reshape(len(array), int(np.prod(array.shape[1:])))
    if array.dtype.kind != "f":  # floats stay as they are: no float64 copy of a large embedding
        array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise UserError(f"{name} holds NaN or infinite values: remove or replace them (e.g. np.nan_to_num) before choosing K")
    return array


def _check_distinct(unit: np.ndarray, k_max: int, what: str) -> None:
    """Fewer distinct points than k_max leaves every K above that count a split of equal points,
    which k-means makes the same way each run: the stability curve then reads 1.0 up to k_max and
    k_max comes out, silently (and the classical criteria fail inside scikit-learn)."""
    distinct = len(np.unique(unit, axis=0))
    if distinct == 1:
        raise UserError(f"choosing K: all {len(unit)} samples are the same point ({what}): there are no clusters to tell apart")
    if distinct < k_max:
        raise UserError(f"choosing K: only {distinct} distinct points ({what}) among {len(unit)} samples: k_max must be at most {distinct}")


def choose_k(
    features,
    k_min: int = DEFAULT_K_RANGE[0],
    k_max: int = DEFAULT_K_RANGE[1],
    seed: int = 0,
    criterion: str = "stability",
    smooth_neighbors: int = 10,
    smooth_rounds: int = 5,
    tolerance: float = TOLERANCE,
    points: np.ndarray | None = None,
    neighbor_index: torch.Tensor | None = None,
) -> tuple[int, dict[int, float]]:
    """(chosen K, {K: criterion value} for every K in k_min..k_max) for N x D features.

    criterion: 'stability' (the largest K within `tolerance` of the highest stability),
    'eigengap' (the largest gap; it reads the unsmoothed `features`, and `neighbor_index`, their
    smooth_neighbors nearest neighbours, when given), 'silhouette' or 'calinski_harabasz'
    (highest), 'davies_bouldin' (lowest). points: the already smoothed features
    (``smoothed_features``), to share them between criteria.

    A UserError refuses what has no K to choose or would fail inside numpy or scikit-learn:
    features that are not a finite real N x D array, fewer than 2 features (a unit-normalised
    single feature is only its sign), fewer distinct points than k_max (every K up to k_max would
    look perfectly stable), too few samples for k_max, and bad k_min, k_max, seed,
    smooth_neighbors, smooth_rounds or tolerance.
    """
    if criterion not in CRITERIA:
        raise UserError(f"unknown K criterion '{criterion}': choose one of {', '.join(CRITERIA)}")
    if not (_is_whole(k_min) and _is_whole(k_max) and 2 <= k_min <= k_max):
        raise UserError(f"choosing K needs whole numbers 2 <= k_min <= k_max, got {k_min!r} and {k_max!r}")
    k_min, k_max = int(k_min), int(k_max)
    # Checked here: a negative seed, no neighbours or a negative tolerance failed deep in numpy
    # (or divided by zero, or emptied the band of K to choose from).
    if not _is_whole(seed) or seed < 0:
        raise UserError(f"choose_k's seed must be a whole number of 0 or more, got {seed!r}")
    if not _is_whole(smooth_neighbors) or smooth_neighbors < 1:
        raise UserError(f"smooth_neighbors must be a whole number of at least 1, got {smooth_neighbors!r}")
    if not _is_whole(smooth_rounds) or smooth_rounds < 0:
        raise UserError(f"smooth_rounds must be a whole number of 0 or more, got {smooth_rounds!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not (math.isfinite(tolerance) and tolerance >= 0):
        raise UserError(f"tolerance must be a finite number of 0 or more, got {tolerance!r}")
    if features is not None:
        features = _checked_matrix(features, "features")
    if points is not None:
        points = _checked_matrix(points, "points")
    n = len(points) if points is not None else len(features)
    if k_max > largest_k(n):
        fewer = f", or a k_max of at most {largest_k(n)}" if largest_k(n) >= 2 else ""
        raise UserError(f"choosing K up to k_max {k_max} needs at least {_samples_needed(k_max)} samples (each stability run clusters {SUBSAMPLE_FRACTION:.0%} of them, more points than clusters), got {n}: pass more samples{fewer}")
    if features is not None and features.shape[1] < 2:
        raise UserError("choosing K needs at least 2 features per sample: each sample is unit-normalised, which leaves a single feature only its sign; cluster one-dimensional data on its values directly (e.g. k-means)")
    if points is not None:
        _check_distinct(points, k_max, "after smoothing")
    else:
        _check_distinct(smoothed_features(features, smooth_neighbors, 0), k_max, "once unit-normalised, as every criterion reads them")
    ks = range(k_min, k_max + 1)
    if criterion == "eigengap":
        if features is None:
            raise ValueError("the eigengap reads the unsmoothed features: pass them, not only points")
        curve = eigengap_curve(features, ks, smooth_neighbors, seed, neighbor_index=neighbor_index)
        return pick_k(criterion, curve, tolerance), curve
    if points is None:
        points = smoothed_features(features, smooth_neighbors, smooth_rounds)
    if criterion == "stability":
        curve = stability_curve(points, ks, seed)
    else:
        curve = classical_curves(points, kmeans_partitions(points, ks, seed), seed)[criterion]
    return pick_k(criterion, curve, tolerance), curve

"""The one k-means of otclust: scikit-learn's KMeans (k-means++ seeding, Lloyd iterations).

Every k-means of the package runs here: the k-means baseline, OT k-means' starting centres,
DeepCluster's and DeeperCluster's pseudo-labels and read-out, the read-out stage and CLOT's size
estimate. scikit-learn's rather than a torch one: it is the reference implementation the tests
compare against, it relocates empty clusters itself, and at the sizes otclust runs (up to
70,000 x 512 features, tens of clusters) its compiled multi-threaded Lloyd on the CPU takes
seconds, next to minutes of training; features on a GPU are copied to the CPU for it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from otclust.ot import size_constrained_inertia, size_constrained_kmeans, size_constrained_lower_bound, squared_distances
from otclust.ot.priors import match_prior_to_mass

KMEANS_CHOICES = ("prior", "inertia")


@dataclass
class KMeansRestart:
    """One k-means end point: K x D centers, each point's nearest center, inertia."""

    centers: torch.Tensor
    labels: np.ndarray
    inertia: float


def _as_float64_array(points: np.ndarray | torch.Tensor) -> np.ndarray:
    """scikit-learn's KMeans input: a contiguous float64 array, from a tensor or an array.

    float64, not the features' float32: in float32 the restarts end elsewhere (measured on
    70,000 Fashion-MNIST embeddings: the same 50 seeds, and the restart kept under equal sizes
    went from 0.732 to 0.693 ACC), and the k-means is not the read-out's slow part."""
    if torch.is_tensor(points):
        points = points.detach().cpu().numpy()
    return np.ascontiguousarray(points, dtype=np.float64)


def kmeans(points, n_clusters: int, seed: int, n_init: int = 10, max_iter: int = 300, init: str | np.ndarray | torch.Tensor = "k-means++") -> KMeansRestart:
    """The lowest-inertia of `n_init` k-means runs on N x D points (threads as torch's).

    `init`: "k-means++", "random" or K x D starting centers (then one run)."""
    return _runs(points, n_clusters, [seed], n_init, max_iter, init)[0]


def kmeans_centers(points, n_clusters: int, seed: int, n_init: int = 10, max_iter: int = 300) -> torch.Tensor:
    """K x D float32 centers of the lowest-inertia of `n_init` k-means++ runs."""
    return kmeans(points, n_clusters, seed, n_init, max_iter).centers


def kmeans_restarts(points, n_clusters: int, seed: int, n_restarts: int, max_iter: int = 300) -> list[KMeansRestart]:
    """Every restart of k-means, not only the lowest-inertia one, so a caller can choose by
    another criterion (the read-out: the cost under the run's cluster-size prior)."""
    restart_seeds = np.random.default_rng(seed % 2**32).integers(2**31 - 1, size=n_restarts)
    return _runs(points, n_clusters, [int(s) for s in restart_seeds], 1, max_iter, "k-means++")


def kmeans_from_partition(points, labels: np.ndarray, n_clusters: int, seed: int, max_iter: int = 300) -> KMeansRestart | None:
    """One k-means run started from a given partition's centres (each part's mean point), e.g.
    the network head's clusters; None when a part is empty (no centre to start it from)."""
    points, labels = _as_float64_array(points), np.asarray(labels)
    counts = np.bincount(labels, minlength=n_clusters)
    if len(counts) > n_clusters or (counts == 0).any():
        return None
    centres = np.zeros((n_clusters, points.shape[1]))
    np.add.at(centres, labels, points)
    return _runs(points, n_clusters, [seed], 1, max_iter, centres / counts[:, None])[0]


def _runs(points, n_clusters: int, seeds: list[int], n_init: int, max_iter: int, init) -> list[KMeansRestart]:
    """One scikit-learn KMeans fit per seed, all under one thread limit (setting it is slow)."""
    # Imported here: scikit-learn takes a second to import, and most commands never cluster.
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    points = _as_float64_array(points)
    if not isinstance(init, str):
        init, n_init = _as_float64_array(init), 1
    ends = []
    with threadpool_limits(limits=max(1, torch.get_num_threads())), warnings.catch_warnings():
        # scikit-learn warns once per restart when the points have fewer distinct values than K;
        # one warning below says it instead of fifty.
        warnings.filterwarnings("ignore", message="Number of distinct clusters", category=ConvergenceWarning)
        for seed in seeds:
            model = KMeans(n_clusters=n_clusters, init=init, n_init=n_init, max_iter=max_iter, random_state=seed % 2**32).fit(points)
            ends.append(KMeansRestart(torch.from_numpy(model.cluster_centers_).float(), model.labels_, float(model.inertia_)))
    found = max(len(np.unique(end.labels)) for end in ends)
    if found < n_clusters:
        warnings.warn(
            f"k-means found only {found} distinct cluster(s) of the {n_clusters} asked for: the features it clusters are (near) "
            "identical (duplicate images, a network that collapsed, e.g. at too high a learning rate, or a set so small that "
            "smoothing over neighbours averaged it into one point); the other clusters stay empty",
            RuntimeWarning,
            stacklevel=3,
        )
    return ends


def choose_kmeans_restart(
    points: torch.Tensor,
    n_clusters: int,
    seed: int,
    restarts: int,
    choice: str = "prior",
    sizes: torch.Tensor | None = None,
    start_labels: np.ndarray | None = None,
    min_excess: float = 0.0,
) -> KMeansRestart:
    """The restart (of `restarts`) kept. choice "inertia": plain k-means' lowest inertia.
    "prior": the lowest inertia under a cluster-size prior (the OT k-means cost, where a
    merge-and-split end point pays for its odd sizes); `sizes` are known proportions (a multiset,
    matched to each restart's clusters by mass), None for equal sizes. "unknown" (sizes unknown):
    the "prior" choice under equal sizes unless they cost at least `min_excess` more than the
    lowest plain inertia (`equal_size_excess`), else the "inertia" one. `start_labels`: a
    partition (the network head's) whose k-means run is one more candidate, judged alike."""
    ends = kmeans_restarts(points, n_clusters, seed, restarts)
    if start_labels is not None:
        started = kmeans_from_partition(points, start_labels, n_clusters, seed)
        if started is not None:
            ends.append(started)
    if choice == "inertia":
        return min(ends, key=lambda end: end.inertia)
    if choice == "unknown":
        return judge_equal_sizes(points, ends, n_clusters, seed, min_excess).end
    return cheapest_under_prior(points, ends, n_clusters, sizes)[0]


@dataclass
class SizeJudgement:
    """Which restart unknown sizes keep (`judge_equal_sizes`), the relative excess cost of equal
    sizes it was judged by (None: not judged), and whether equal sizes won."""

    end: KMeansRestart
    excess: float | None
    equal: bool


def judge_equal_sizes(points, ends: list[KMeansRestart], n_clusters: int, seed: int, min_excess: float) -> SizeJudgement:
    """The one rule for unknown sizes, shared by the read-out and CLOT's size estimate: the
    lowest plain inertia, unless `min_excess` > 0 and equal sizes cost less than that much more
    (`equal_size_excess`), when the restart cheapest under equal sizes is kept instead."""
    if min_excess <= 0:  # sizes never judged: the lowest plain inertia, as before the option
        return SizeJudgement(min(ends, key=lambda end: end.inertia), None, False)
    excess, free, equal = equal_size_excess(points, ends, n_clusters, seed=seed)
    return SizeJudgement(equal, excess, True) if excess < min_excess else SizeJudgement(free, excess, False)


def equal_size_excess(
    points, ends: list[KMeansRestart], n_clusters: int, refit: int = 10, max_points: int = 20_000, seed: int = 0
) -> tuple[float, KMeansRestart, KMeansRestart]:
    """How much more, relative, the best partition into equal sizes costs than the lowest plain
    inertia: (its cost - inertia) / inertia, per point; with the lowest-inertia end and the end
    cheapest under equal sizes. The cost is also taken with that end's centers after `refit`
    size-constrained Lloyd steps (size_constrained_kmeans), the lower of the two kept: centers
    placed for free sizes overstate what equal sizes cost. The steps, and the inertia they are
    compared with, use at most `max_points` points drawn with `seed` (the steps are the costly
    part, and the excess is a mean per point, which a sample estimates). Near 0 where the
    clusters are about equal, or where equal ones fit the points nearly as well (a merge-and-split
    partition of equal classes); large where equal sizes must cut big clusters."""
    free = min(ends, key=lambda end: end.inertia)
    equal, cost = cheapest_under_prior(points, ends, n_clusters, None)
    per_point = free.inertia / len(free.labels)
    excess = (cost - per_point) / max(per_point, 1e-12)
    if refit > 0:
        sample = torch.as_tensor(points)
        if len(sample) > max_points:
            sample = sample[torch.from_numpy(np.random.default_rng(seed).choice(len(sample), max_points, replace=False))]
        sample_inertia = float(squared_distances(sample.double(), free.centers.double()).min(dim=1).values.mean())
        refitted = size_constrained_kmeans(sample, equal.centers, None, refit)[1]
        excess = min(excess, (refitted - sample_inertia) / max(sample_inertia, 1e-12))
    return excess, free, equal


def cheapest_under_prior(points, ends: list[KMeansRestart], n_clusters: int, sizes: torch.Tensor | None = None) -> tuple[KMeansRestart, float]:
    """Of k-means end points `ends`, the one whose OT k-means cost under the size prior (`sizes`,
    matched to each end's clusters by mass; None: equal sizes) is lowest, and that cost per point."""
    distinct = {}  # restarts that end in the same partition (in any cluster order): solve the OT once
    for end in ends:
        distinct.setdefault(_partition_key(end.labels), end)
    points = torch.as_tensor(points).double()  # once, not in every bound and solve below
    best, best_cost = None, float("inf")
    for end in sorted(distinct.values(), key=lambda end: end.inertia):
        # A plan under the prior pays at least each point's nearest centre, so its cost is at
        # least the plain inertia (the margin: Sinkhorn's marginal tolerance); in increasing plain
        # inertia, once that passes the best cost found no later restart can win, and its OT
        # solve (the read-out's slowest part) is skipped.
        if best is not None and end.inertia / len(points) >= best_cost * (1 + 1e-3):
            break
        matched = None
        if sizes is not None:
            mass = torch.from_numpy(np.bincount(end.labels, minlength=n_clusters)).double()
            matched = match_prior_to_mass(sizes.double().cpu(), mass)
        # A tighter bound of the same kind (the transport dual after a few Sinkhorn iterations,
        # a tenth of a solve) rules out most merge-and-split partitions without their solve.
        if best is not None and size_constrained_lower_bound(points, end.centers, matched) >= best_cost * (1 + 1e-3):
            continue
        cost = size_constrained_inertia(points, end.centers, matched)
        if cost < best_cost:
            best, best_cost = end, cost
    return best, best_cost


def _partition_key(labels: np.ndarray) -> bytes:
    """The same bytes for the same partition, whatever the clusters' numbering: each label
    replaced by the rank of its first occurrence."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].astype(np.int32).tobytes()

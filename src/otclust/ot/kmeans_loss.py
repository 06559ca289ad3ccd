"""k-means as entropic optimal transport: the clustering loss of Genevay et al. (2019).

k-means assigns each embedding f(x_i) to its nearest center; written as a transport problem
between the n samples (mass 1/n each) and the K centers (masses w, the cluster sizes), the hard
assignment becomes a plan pi and the objective ``<pi, C>`` with ``C_ik = ||f(x_i) - mu_k||^2``.
Adding entropy makes the optimal value smooth in C, hence in the network and the centers:

    OT_eps(C) = min_{pi 1 = 1/n, pi^T 1 = w}  <pi, C> + eps * sum_ik pi_ik (log pi_ik - 1)

Its gradient is ``dOT_eps/dC = pi*`` (envelope theorem: the plan's own dependence on C drops out
at the optimum), so the loss needs no backpropagation through Sinkhorn iterations: solve without
gradients, detach the plan, and differentiate ``sum(pi* * C)``. That is exact for the regularized
value, cheaper than unrolling and uses O(1) memory in the number of iterations.

Costs are not normalized: ``eps`` is in units of squared embedding distances (the paper uses
eps = 1e-2 on its embeddings). Rescaling the embeddings by s is the same as dividing eps by s^2.
"""

from __future__ import annotations

import math

import torch

from otclust.ot.sinkhorn import sinkhorn

__all__ = ["ot_kmeans_loss", "soft_kmeans_loss", "squared_distances", "size_constrained_inertia", "size_constrained_kmeans"]


def squared_distances(embeddings: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """N x K matrix of ||x_i - mu_k||^2, differentiable in both arguments.

    Uses the expansion |x|^2 + |mu|^2 - 2 x.mu (one matmul, no N x K x D tensor) rather than
    cdist(...)**2: the square root inside cdist has an infinite derivative at distance 0, which
    happens when a center sits on a sample, and turns that gradient into NaN. The price is
    cancellation when distances are tiny next to the norms (float32: absolute error ~1e-7 |x|^2).
    """
    if embeddings.dim() != 2 or centers.dim() != 2 or embeddings.shape[1] != centers.shape[1]:
        raise ValueError(
            "embeddings (N x D) and centers (K x D) must share D, "
            f"got {tuple(embeddings.shape)} and {tuple(centers.shape)}"
        )
    x2 = (embeddings * embeddings).sum(dim=1, keepdim=True)
    m2 = (centers * centers).sum(dim=1)[None, :]
    return (x2 + m2 - 2.0 * embeddings @ centers.T).clamp_min(0.0)


def _entropy_term(plan: torch.Tensor, eps: float) -> torch.Tensor:
    """eps * sum pi (log pi - 1), with 0 log 0 = 0."""
    return eps * (torch.xlogy(plan, plan) - plan).sum()


def ot_kmeans_loss(
    embeddings: torch.Tensor,
    centers: torch.Tensor,
    eps: float,
    weights: torch.Tensor | None = None,
    n_iters: int = 1000,
    tol: float = 1e-4,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropic OT k-means loss (the OT_eps clustering loss, Algorithm 2 of Genevay et al.).

    Args:
        embeddings: N x D, f(x_i); gradients flow to it.
        centers: K x D cluster centers mu_k; gradients flow to them.
        eps: entropic temperature, in units of squared distances (no cost normalization).
        weights: K cluster proportions w (> 0, sum 1); uniform by default. These are the
            constraint that makes this more than soft k-means: no cluster can be emptied.
        n_iters, tol: Sinkhorn budget and relative marginal tolerance; the envelope-theorem
            gradient is exact only at the optimal plan, hence a tight default.
        entropy: if False (default) the returned value is the transport cost ``<pi*, C>``, the
            number comparable to a k-means objective (mean squared distance to the assigned
            centers); if True it is the full regularized value OT_eps, which adds the constant
            ``eps * sum pi (log pi - 1)``. The gradient is the same either way, and it is the
            gradient of OT_eps (what the paper minimizes), since the entropy term is detached.

    Returns:
        (loss, plan): a scalar with gradients w.r.t. embeddings and centers, and the detached
        N x K plan (rows sum to 1/N, columns to w), usable as soft assignments.
    """
    cost = squared_distances(embeddings, centers)
    result = sinkhorn(-cost.detach(), eps=eps, b=weights, n_iters=n_iters, tol=tol)
    plan = result.plan.to(cost.dtype)
    loss = (plan * cost).sum()
    if entropy:
        loss = loss + _entropy_term(plan, float(eps))
    return loss, plan


def soft_kmeans_loss(
    embeddings: torch.Tensor, centers: torch.Tensor, eps: float, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft k-means / DKM loss: OT_eps with only the sample marginal (Proposition 2 of the paper).

    Without the cluster-size constraint the problem decouples per sample and the plan is closed
    form, ``pi_ik = softmax_k(-C_ik / eps) / N``, i.e. DKM's softmin assignments with
    alpha = 1/eps (Fard et al.), here averaged rather than summed over samples.

    Args:
        entropy: if False (default) the loss is DKM's ``sum pi C`` with gradients through the
            softmax as well, exactly what DKM optimizes. If True it is the regularized value
            ``-eps * mean_i logsumexp_k(-C_ik/eps) - eps * (log N + 1)`` (equal to
            ``<pi, C> + eps sum pi (log pi - 1)`` at the optimum), whose gradient is the envelope
            one, ``pi`` itself, as in ``ot_kmeans_loss``.

    Returns:
        (loss, plan) with the plan detached, rows summing to 1/N.
    """
    eps = float(eps)
    cost = squared_distances(embeddings, centers)
    n = cost.shape[0]
    logits = -cost / eps
    plan = torch.softmax(logits, dim=1) / n
    if entropy:
        loss = -eps * torch.logsumexp(logits, dim=1).mean() - eps * (math.log(n) + 1.0)
    else:
        loss = (plan * cost).sum()
    return loss, plan.detach()


@torch.no_grad()
def size_constrained_inertia(points: torch.Tensor, centers: torch.Tensor, sizes: torch.Tensor | None = None, relative_eps: float = 0.05) -> float:
    """Mean squared distance from points to centers when center k must take a share sizes[k]
    of the points (uniform by default): ``<pi*, C>`` of the OT k-means plan, in float64.

    k-means' own inertia lets one center take two classes while two others split a third; under
    a size prior that end point pays for moving the surplus to far centers, so comparing k-means
    restarts by this cost prefers partitions the prior allows. eps is ``relative_eps`` times the
    unconstrained inertia (the mean squared distance to the nearest center), so the answer does
    not depend on the scale of the points and the plan stays close to a hard assignment.
    """
    cost, eps, weights = _size_constrained_problem(points, centers, sizes, relative_eps)
    plan = sinkhorn(-cost, eps=eps, b=weights, n_iters=2000, tol=1e-4).plan
    return float((plan * cost).sum())


def size_constrained_kmeans(points: torch.Tensor, centers: torch.Tensor, sizes: torch.Tensor | None = None, iters: int = 10, relative_eps: float = 0.05) -> tuple[torch.Tensor, float]:
    """Lloyd's iterations with the size prior imposed: each step assigns the points by the OT
    plan of size_constrained_inertia, then moves every center to the mean of the points its
    column holds. From `centers`, `iters` steps -> (K x D float64 centers, their
    size_constrained_inertia). The cost never rises by more than Sinkhorn's tolerance a step
    (the plan is the best for the centers, the means the best for the plan)."""
    points, centers = points.double(), centers.double()
    for _ in range(iters):
        cost, eps, weights = _size_constrained_problem(points, centers, sizes, relative_eps)
        plan = sinkhorn(-cost, eps=eps, b=weights, n_iters=2000, tol=1e-4).plan
        centers = (plan.T @ points) / plan.sum(dim=0).clamp_min(1e-300)[:, None]
    return centers, size_constrained_inertia(points, centers, sizes, relative_eps)


def _size_constrained_problem(points, centers, sizes, relative_eps):
    """(N x K float64 squared distances, eps = relative_eps x their plain inertia, the K column
    weights summing to 1) of size_constrained_inertia and its lower bound."""
    cost = squared_distances(points.double(), centers.double())
    eps = relative_eps * float(cost.min(dim=1).values.mean().clamp_min(1e-12))
    k = centers.shape[0]
    weights = torch.full((k,), 1.0 / k, dtype=torch.float64, device=cost.device) if sizes is None else (sizes.double() / sizes.double().sum()).to(cost.device)
    return cost, eps, weights


@torch.no_grad()
def size_constrained_lower_bound(points: torch.Tensor, centers: torch.Tensor, sizes: torch.Tensor | None = None, relative_eps: float = 0.05, n_iters: int = 30) -> float:
    """A lower bound on the exact (unregularised) cost of sending the points to the centers under
    the size prior, and so on what size_constrained_inertia returns (up to its marginal tolerance).

    By weak duality, for any column potentials g the semi-dual ``mean_i min_k (C_ik - g_k) +
    sum_k b_k g_k`` is at most the optimal transport cost; g = 0 gives the plain inertia. Here g is
    eps times the column scaling's log after ``n_iters`` Sinkhorn iterations at
    size_constrained_inertia's eps: a few dozen iterations, a fraction of a converged solve, bring
    the bound close to the cost of partitions whose sizes are far from the prior."""
    cost, eps, weights = _size_constrained_problem(points, centers, sizes, relative_eps)
    g = eps * sinkhorn(-cost, eps=eps, b=weights, n_iters=n_iters).log_v.double()
    return float((cost - g[None, :]).min(dim=1).values.mean() + (weights * g).sum())

"""Progressive partial OT: only a share rho of the mass goes to the clusters, the rest to a virtual one.

The P²OT idea (Zhang, Ren and He, ICLR 2024, "Progressive Partial Optimal Transport for Deep
Imbalanced Clustering"), written for this package's Sinkhorn family. Two changes to the
balanced problem of ``otclust.ot.sinkhorn``:

* the cluster sizes are a soft target, ``tau * KL(Q^T 1 | rho * b)``, as in
  ``otclust.ot.unbalanced``, so clusters can end up unequal when the scores insist;
* only a total mass rho (0 < rho <= 1) of the samples' mass is transported to the K clusters. The
  rest, 1 - rho, goes to a virtual cluster that is trained on by nobody: it takes the samples
  the clusters fit worst, so early in training, when most pseudo-labels are wrong, a method
  learns from its most confident share only, and rho grows to 1 as training goes on.

With a = the sample masses and A = sum(a):

    max_{Q, xi >= 0}  <Q, scores> + eps * H([Q, xi]) - tau * KL(Q^T 1 | rho * b)
    subject to         Q 1 + xi = a,   xi^T 1 = (1 - rho) * A.

The virtual column's mass is fixed, so its own score does not matter (any constant adds the same
amount to every feasible plan); it is 0. The problem is then one semi-relaxed OT on K + 1
columns whose last column has an infinite KL weight, and the scaling iteration of Chizat et al.
(2018) solves it: the row update is the balanced one over K + 1 columns, the real columns take
the damped update ``v = (rho b / K^T u) ** (tau / (tau + eps))``, the virtual column the exact
``v = (1 - rho) A / sum(u)``. Like ``sinkhorn_semi_relaxed`` it runs in the log domain, for the
same reason: it is meant for one training batch against K clusters.

``training_rho`` is P²OT's sigmoid ramp of rho over training, from rho0 to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from otclust.ot.sinkhorn import SinkhornResult
from otclust.ot.unbalanced import global_column_logsumexp, relaxed_problem

__all__ = ["PartialResult", "sinkhorn_partial", "training_rho"]


@dataclass
class PartialResult(SinkhornResult):
    """``SinkhornResult`` whose plan has only the K real columns: its rows sum to each sample's
    transported share (<= a), and ``virtual`` is the N masses sent to the virtual cluster."""

    virtual: torch.Tensor | None = None
    rho: float = 1.0


def training_rho(progress: float | None, rho0: float = 0.1) -> float:
    """Transported mass at training progress in [0, 1]: rho0 + (1 - rho0) exp(-5 (1 - progress)^2).

    The sigmoid-shaped ramp of P²OT (from Laine and Aila's ramp-up): slow at first, while the
    network's clusters mean little, then quickly to 1. None (progress unknown) gives 1: all mass.
    """
    if progress is None:
        return 1.0
    t = min(max(float(progress), 0.0), 1.0)
    return rho0 + (1.0 - rho0) * math.exp(-5.0 * (1.0 - t) ** 2)


def sinkhorn_partial(
    scores: torch.Tensor,
    eps: float,
    rho: float,
    tau: float = 1.0,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    n_iters: int = 1000,
    tol: float | None = 1e-6,
    distributed: bool = False,
) -> PartialResult:
    """Entropic partial OT plan: mass rho to K KL-relaxed clusters, 1 - rho to a virtual one.

    Args:
        scores: N x K log-probabilities or negative costs (higher = better fit), as for ``sinkhorn``.
        eps: entropic temperature (> 0).
        rho: share of the total row mass transported to the real clusters, in (0, 1]; 1 is
            ``sinkhorn_semi_relaxed``.
        tau: KL strength of the column target rho * b (> 0; ``math.inf`` makes the real columns
            exact: partial OT with fixed cluster sizes). Same units as ``scores``.
        a: N row masses (> 0); default 1/N each (the global N when ``distributed``).
        b: K cluster proportions (> 0), rescaled to a's total; default uniform.
        n_iters: maximum number of iterations.
        tol: stop when no log column scaling moves by more than ``tol`` in an iteration; None
            runs all ``n_iters``.
        distributed: this process holds some rows of a global problem (column log-sum-exps and
            the virtual column's are reduced over ``torch.distributed`` processes).

    Returns:
        PartialResult: ``plan`` (N x K, the real columns), ``virtual`` (N), ``plan.sum(1) +
        virtual == a`` exactly, ``virtual.sum() == (1 - rho) * A`` within ``tol``; ``error`` is the
        last iteration's largest change of a log column scaling.
    """
    rho = float(rho)
    if not 0 < rho <= 1:
        raise ValueError(f"sinkhorn_partial: rho (the transported share) must be in (0, 1], got {rho}")
    s, a, b, total_a, in_dtype, n_iters, distributed = relaxed_problem("sinkhorn_partial", scores, eps, tau, a, b, n_iters, tol, distributed)
    eps, tau = float(eps), float(tau)
    work = s.dtype
    n, k = s.shape
    with torch.no_grad():
        log_a = torch.log(a)
        log_b = torch.log(b * (rho * total_a / b.sum()))
        # rho = 1 leaves the virtual column empty: its log scaling stays -inf (exp gives exact zeros).
        log_virtual_mass = math.log((1.0 - rho) * float(total_a)) if rho < 1 else -math.inf
        damping = 1.0 if math.isinf(tau) else tau / (tau + eps)

        log_v = torch.zeros(k, dtype=work, device=s.device)
        log_w = torch.tensor(0.0 if rho < 1 else -math.inf, dtype=work, device=s.device)  # virtual column

        def row_update():
            # The virtual column's kernel entry is exp(0) = 1, so its term in row i is just w.
            both = torch.cat([s + log_v, log_w.expand(n, 1)], dim=1)
            return log_a - torch.logsumexp(both, dim=1)

        log_u = row_update()
        change, done = math.inf, 0
        while done < n_iters:
            column = global_column_logsumexp(s + log_u[:, None], distributed)
            new_log_v = damping * (log_b - column)
            change = float((new_log_v - log_v).abs().max())  # the same on every process
            log_v = new_log_v
            if rho < 1:
                new_log_w = log_virtual_mass - global_column_logsumexp(log_u[:, None], distributed)[0]
                change = max(change, float((new_log_w - log_w).abs()))
                log_w = new_log_w
            log_u = row_update()
            done += 1
            if tol is not None and change <= tol:
                break
        plan = torch.exp(s + log_u[:, None] + log_v[None, :])
        virtual = torch.exp(log_u + log_w)
    return PartialResult(plan=plan.to(in_dtype), n_iters=done, error=change, log_u=log_u, log_v=log_v, virtual=virtual.to(in_dtype), rho=rho)

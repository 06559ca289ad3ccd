"""Entropic OT whose cluster sizes are only a soft target (semi-relaxed, KL-penalised columns).

The balanced problem of ``otclust.ot.sinkhorn`` forces every cluster to receive exactly its prior
mass b_k. That is what rules out the one-cluster collapse, and also what costs accuracy when the
true clusters have unequal sizes that are not known in advance. Following Chizat et al. (2018,
"Scaling algorithms for unbalanced optimal transport problems"), the column constraint is
replaced by a penalty ``tau * KL(Q^T 1 | b)``, while the rows stay exact (every sample still
hands out all its mass):

    max_Q  <Q, scores> + eps * H(Q) - tau * KL(Q^T 1 | b)   subject to  Q 1 = a.

tau -> inf gives the balanced plan back; tau -> 0 leaves the columns free (each row becomes
softmax(scores/eps) * a_i, which no longer prevents a collapse). In between, a cluster may end up
larger or smaller than b_k when the scores insist, at a price that grows with the deviation.

The scaling iteration keeps the balanced row update and damps the column one by the exponent
tau / (tau + eps): ``v = (b / K^T u) ** (tau / (tau + eps))``. It runs in the log domain: the
problems this is meant for are one training batch against K clusters (hundreds x tens), where
log-sum-exp costs nothing, and the damped update has no fixed range that scaling iterations
could rely on.
"""

from __future__ import annotations

import math

import torch

from otclust.ot.sinkhorn import SinkhornResult, as_marginal, checked_eps, iteration_cap, several_processes

__all__ = ["sinkhorn_semi_relaxed"]


def global_column_logsumexp(x: torch.Tensor, distributed: bool) -> torch.Tensor:
    """logsumexp over rows (dim 0), over the rows of every process when distributed."""
    if not distributed:
        return torch.logsumexp(x, dim=0)
    import torch.distributed as dist

    peak = x.max(dim=0).values
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    safe_peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.exp(x - safe_peak).sum(dim=0)
    dist.all_reduce(total)
    return safe_peak + torch.log(total)


def relaxed_problem(name, scores, eps, tau, a, b, n_iters, tol, distributed):
    """What the KL-relaxed solvers (semi-relaxed here, partial in partial.py) share before
    iterating: the checks, scores / eps in the working precision, the marginals, and the total
    row mass over processes. Returns (s, a, b, total_a, input dtype, iteration cap, distributed)."""
    if scores.dim() != 2:
        raise ValueError(f"{name}: scores must be N x K, got shape {tuple(scores.shape)}")
    eps, tau = checked_eps(eps, name), float(tau)
    if not tau > 0:
        raise ValueError(f"{name}: tau must be positive (math.inf for exact cluster sizes), got {tau}")
    n_iters = iteration_cap(n_iters, tol, name)
    distributed = distributed and several_processes()
    in_dtype = scores.dtype
    work = torch.float64 if in_dtype == torch.float64 else torch.float32
    with torch.no_grad():
        s = scores.detach().to(work) / eps
        n, k = s.shape
        if n == 0 or k == 0:
            raise ValueError(f"{name}: scores must have at least one row and one column")
        if a is None and distributed:
            n_total = torch.tensor([float(n)], device=s.device)
            torch.distributed.all_reduce(n_total)
            a = torch.full((n,), 1.0 / float(n_total.item()), dtype=work, device=s.device)
        a = as_marginal(a, n, "a", s, work)
        b = as_marginal(b, k, "b", s, work)
        total_a = a.sum()
        if distributed:
            torch.distributed.all_reduce(total_a)
    return s, a, b, total_a, in_dtype, n_iters, distributed


def sinkhorn_semi_relaxed(
    scores: torch.Tensor,
    eps: float,
    tau: float,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    n_iters: int = 1000,
    tol: float | None = 1e-6,
    distributed: bool = False,
) -> SinkhornResult:
    """Entropic OT plan with exact rows and KL-penalised columns (see the module docstring).

    Args:
        scores: N x K log-probabilities or negative costs (higher = better fit), as for ``sinkhorn``.
        eps: entropic temperature (> 0); ``sinkhorn_semi_relaxed(log P, eps=1/lambda, tau)`` is the
            relaxed form of CLOT/SeLa's ``diag(u) P^lambda diag(v)``.
        tau: strength of the KL penalty on the column sums (> 0, may be ``math.inf`` for the
            balanced problem). Same units as ``scores``.
        a: N row masses (> 0); default 1/N each (the global N when ``distributed``).
        b: K target cluster masses (> 0), rescaled to a's total; default uniform.
        n_iters: maximum number of iterations (column update then row update).
        tol: stop when no log column scaling moves by more than ``tol`` in an iteration; None runs
            all ``n_iters``.
        distributed: this process holds some rows of a global problem; the column log-sum-exps
            are reduced across ``torch.distributed`` processes (every process must pass the
            same eps, tau, b, n_iters and tol).

    Returns:
        SinkhornResult with the plan (rows sum to ``a`` exactly; columns near ``b``, by how much
        depends on tau), ``n_iters`` done, and ``error`` = the last iteration's largest change of a
        log column scaling (the stopping quantity here: the columns are not meant to equal b).
    """
    s, a, b, total_a, in_dtype, n_iters, distributed = relaxed_problem("sinkhorn_semi_relaxed", scores, eps, tau, a, b, n_iters, tol, distributed)
    eps, tau = float(eps), float(tau)
    work = s.dtype
    n, k = s.shape
    with torch.no_grad():
        log_a, log_b = torch.log(a), torch.log(b * (total_a / b.sum()))
        # v = (b / K^T u)^damping; damping = 1 is the balanced column update.
        damping = 1.0 if math.isinf(tau) else tau / (tau + eps)

        log_v = torch.zeros(k, dtype=work, device=s.device)
        log_u = log_a - torch.logsumexp(s + log_v, dim=1)
        change, done = math.inf, 0
        while done < n_iters:
            column = global_column_logsumexp(s + log_u[:, None], distributed)
            new_log_v = damping * (log_b - column)
            change = float((new_log_v - log_v).abs().max())  # the same on every process
            log_v = new_log_v
            log_u = log_a - torch.logsumexp(s + log_v, dim=1)
            done += 1
            if tol is not None and change <= tol:
                break
        plan = torch.exp(s + log_u[:, None] + log_v[None, :])
    return SinkhornResult(plan=plan.to(in_dtype), n_iters=done, error=change, log_u=log_u, log_v=log_v)

"""Many small balanced OT problems solved together: CLOT's heads and views, every training step.

CLOT labels each view of each head with its own Sinkhorn problem: with five heads, ten problems
of one batch (256 x 10) a step. ``otclust.ot.sinkhorn`` is built for one large problem; on a
problem this small each iteration is a dozen tensor operations on a few thousand numbers, so
their fixed cost, not arithmetic, is the time (about 2 ms a problem at the 30-50 over-relaxed
iterations CLOT's problems need late in training, a fifth of a training step). Here the
problems are stacked into one B x N x K tensor and every iteration is one batched
matrix-vector product per half-step for all of them.

The algorithm is the main solver's, simplified for problems that fit in float64:

* the kernel ``exp(scores/eps - row max)`` is formed once, in float64, and the scalings stay in
  the scaling domain: float64 has the range that float32 needs log-domain absorptions for. A
  problem with a kernel entry under e^-700 of its row's largest, or whose scalings over- or
  underflow, is solved by ``sinkhorn`` instead, which absorbs;
* each problem stops on its own once ``max_j |Q^T 1 - b|_j / b_j <= tol`` with exact rows (its
  scalings are then frozen while the others go on), so every plan meets the tolerance that a
  separate ``sinkhorn`` call with the same arguments would;
* over-relaxation with the same per-coordinate safeguard (each half-step stays a dual ascent
  step, see ``_Solver.relaxed_update``), its factor chosen per problem from the measured plain
  convergence rate by Young's rule and raised later if the relaxed rate calls for more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from otclust.ot.sinkhorn import _OMEGA_MAX, checked_eps, iteration_cap, several_processes, sinkhorn

__all__ = ["BatchedSinkhornResult", "sinkhorn_batched"]

# exp(-700) ~ 1e-304: kernel entries below it (relative to their row's largest) count as it.
_LOG_FLOOR = -700.0
# Plain iterations measured before the over-relaxation factor is first chosen, and the window
# (in iterations) over which the relaxed rate is measured before it may be raised.
_RATE_START = 2
_RATE_WINDOW = 4
_RAISE_WINDOW = 16


@dataclass
class BatchedSinkhornResult:
    plan: torch.Tensor  # B x N x K; rows of each plan sum to a, columns to b within `error`
    n_iters: torch.Tensor  # B full iterations each problem took
    error: torch.Tensor  # B final relative column errors


def _young_omega(r: torch.Tensor) -> torch.Tensor:
    """Optimal over-relaxation for a plain convergence rate r: 2 / (1 + sqrt(1 - r)), capped."""
    return (2.0 / (1.0 + (1.0 - r.clamp(0.0, 0.999)).sqrt())).clamp(max=_OMEGA_MAX)


def _relaxed(scale: torch.Tensor, products: torch.Tensor, target: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """scale * (target / (scale * products)) ** w, w = min(omega, 1 + 1 / (1 + t/2)) for t > 0.

    The same safeguarded over-relaxed update as the single solver's (``_Solver.relaxed_update``):
    w = 1 is the plain update, and the bound keeps every coordinate step a dual ascent step."""
    t = torch.log(target / (scale * products))
    w = torch.minimum(1.0 + 1.0 / (1.0 + 0.5 * t.clamp_min(0.0)), omega[:, None])
    return scale * torch.exp(w * t)


def sinkhorn_batched(
    scores: torch.Tensor,
    eps: float,
    b: torch.Tensor | None = None,
    n_iters: int | None = None,
    tol: float | None = None,
    distributed: bool = False,
    overrelax: bool = True,
    check_every: int = 1,
) -> BatchedSinkhornResult:
    """Entropic OT plans of B independent problems between N samples and K clusters.

    Problem i is ``sinkhorn(scores[i], eps, b=b[i], n_iters, tol, distributed=distributed)``: rows
    1/N each (the global N when ``distributed``), columns ``b[i]`` (a K vector shared by all, a
    B x K tensor, or None for 1/K), rescaled to sum to 1. Same stopping rule per problem; see the
    module docstring for what differs in the arithmetic (float64, no absorptions).

    Args:
        scores: B x N x K (half precision and float32 are computed in float64).
        eps: entropic temperature (> 0).
        b: cluster-size priors, positive, each summing to 1 within 1e-4.
        n_iters: iteration cap per problem (default 1000 with ``tol``, else 100).
        tol: relative column error at which a problem stops; None runs ``n_iters`` iterations.
        distributed: this process holds some rows of every problem; column sums are all-reduced.
        overrelax: allow over-relaxed iterations (default), as ``sinkhorn``.
        check_every: test the stopping rule every this many iterations only (and where the
            over-relaxation measures its rate, and at the cap). Each test is a handful of
            operations and, on a GPU, one wait for the device; a problem may then run up to
            check_every - 1 iterations past its tolerance, so its plan meets it all the same.

    Returns:
        BatchedSinkhornResult with plans in the dtype of ``scores``.
    """
    if scores.dim() != 3:
        raise ValueError(f"sinkhorn_batched: scores must be B x N x K, got shape {tuple(scores.shape)}")
    eps = checked_eps(eps, "sinkhorn_batched")
    n_iters = iteration_cap(n_iters, tol, "sinkhorn_batched")
    nb, n, k = scores.shape
    if nb == 0 or n == 0 or k == 0:
        raise ValueError("sinkhorn_batched: scores must have at least one problem, row and column")
    if not (isinstance(check_every, int) and check_every >= 1):
        raise ValueError(f"sinkhorn_batched: check_every must be a whole number >= 1, got {check_every!r}")
    distributed = distributed and several_processes()
    device = scores.device
    if device.type == "mps":  # no float64 there: one problem at a time, with absorptions
        return _one_by_one(scores, eps, b, n_iters, tol, distributed, overrelax)
    dtype = torch.float64

    with torch.no_grad():
        s = scores.detach().to(dtype)
        b = _priors(b, nb, k, s)
        n_total = float(n)
        if distributed:
            count = torch.tensor([n_total], dtype=dtype, device=device)
            torch.distributed.all_reduce(count)
            n_total = float(count.item())
        a = 1.0 / n_total
        logk = s / eps
        logk = logk - logk.amax(dim=2, keepdim=True)
        # An entry under the floor would need the log-domain absorptions of the single solver
        # to be represented (its cluster's scaling beyond e^700): such problems go there.
        needs_log = (logk < _LOG_FLOOR).flatten(1).any(dim=1)
        if distributed:
            flag = needs_log.to(dtype)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            needs_log = flag > 0
        kern = torch.exp(logk.clamp_(min=_LOG_FLOOR))
        kern_t = kern.transpose(1, 2).contiguous()  # rows of K^T: both products read memory in order

        def col_sums(u):  # K^T u for every problem, over all processes' rows
            sums = torch.bmm(u.unsqueeze(1), kern).squeeze(1)
            if distributed:
                torch.distributed.all_reduce(sums)
            return sums

        def row_products(v):
            return torch.bmm(v.unsqueeze(1), kern_t).squeeze(1)

        v = torch.ones(nb, k, dtype=dtype, device=device)
        kv = row_products(v)
        u = a / kv
        rows_exact = True
        omega = torch.ones(nb, dtype=dtype, device=device)
        active = ~needs_log
        iters = torch.full((nb,), n_iters, dtype=torch.long, device=device)
        error = torch.full((nb,), math.inf, dtype=dtype, device=device)
        history: dict[int, torch.Tensor] = {}
        all_active = not bool(needs_log.any())  # every problem still iterating: no masking needed
        a_full = torch.full_like(u, a)
        relax = False  # whether any problem over-relaxes yet (omega only ever rises)
        it = 0
        while True:
            ktu = col_sums(u)
            if _checks(it, check_every, n_iters, overrelax):
                # The error of this iterate with exact rows: the stopping test, as in sinkhorn.
                if rows_exact:
                    u_exact, col = u, ktu * v
                else:
                    u_exact = a / kv
                    col = col_sums(u_exact) * v
                err = ((col - b).abs() / b).amax(dim=1)
                err = torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))
                error = torch.where(active, err, error)
                stop = active & (err <= tol) if tol is not None else torch.zeros_like(active)
                if it >= n_iters:
                    stop = active.clone()
                # One transfer to the host for both decisions (each one a device sync on a GPU).
                any_stop, any_active = torch.stack([stop.any(), (active & ~stop).any()]).tolist()
                if any_stop:
                    iters = torch.where(stop, torch.full_like(iters, it), iters)
                    u = torch.where(stop[:, None], u_exact, u)
                    active = active & ~stop
                    all_active = False
                if not any_active:
                    break
                if overrelax:
                    history[it] = err
                    if _omega_may_change(it):
                        omega = _update_omega(omega, history, it, err, active)
                        relax = relax or bool((omega > 1.0).any())
            new_v = _relaxed(v, ktu, b, omega) if relax else b / ktu
            v = new_v if all_active else torch.where(active[:, None], new_v, v)
            kv = row_products(v)
            new_u = _relaxed(u, kv, a_full, omega) if relax else a / kv
            u = new_u if all_active else torch.where(active[:, None], new_u, u)
            rows_exact = not relax
            it += 1

        plan = u[:, :, None] * kern * v[:, None, :]
        bad = needs_log | ~torch.isfinite(plan).flatten(1).all(dim=1) | ~torch.isfinite(error)
        if distributed:
            flag = bad.to(dtype)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = flag > 0
        for i in torch.nonzero(bad).flatten().tolist():
            # Kernel entries under the floor, or scalings out of float64's range (a cluster almost
            # no sample can reach at this eps): the single solver's log-domain absorptions.
            single = sinkhorn(scores[i], eps=eps, b=b[i], n_iters=n_iters, tol=tol, distributed=distributed, overrelax=overrelax)
            plan[i] = single.plan.to(dtype)
            iters[i], error[i] = single.n_iters, single.error
    return BatchedSinkhornResult(plan=plan.to(scores.dtype), n_iters=iters, error=error)


def _checks(it: int, check_every: int, n_iters: int, overrelax: bool) -> bool:
    """Whether iteration `it` tests the stopping rule: every check_every-th, the cap, and the
    iterations whose errors the over-relaxation's rate measurements read."""
    return it % check_every == 0 or it >= n_iters or (overrelax and (it == _RATE_START or _omega_may_change(it)))


def _omega_may_change(it: int) -> bool:
    """The iterations at which _update_omega measures a rate (elsewhere omega stays)."""
    first = _RATE_START + _RATE_WINDOW
    return it == first or (it > first and (it - first) % _RAISE_WINDOW == 0)


def _update_omega(omega: torch.Tensor, history: dict, it: int, err: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Each problem's over-relaxation factor, from its measured rates (Young's rule, as sinkhorn).

    After _RATE_START + _RATE_WINDOW plain iterations the plain rate r gives omega; problems
    converging fast (r < 0.5) stay plain. Every _RAISE_WINDOW iterations after that, the rate rho
    observed under omega is turned back into r by Young's relation (rho + omega - 1)^2 = rho
    omega^2 r, and omega is raised if that calls for more (never lowered: the per-coordinate
    bound, not omega, keeps a step safe). `history` maps iterations to their errors."""
    if it == _RATE_START + _RATE_WINDOW:
        rate = (err / history[_RATE_START]).pow(1.0 / _RATE_WINDOW)
        return torch.where(active & (rate > 0.5) & torch.isfinite(rate), _young_omega(rate), omega)
    rho = (err / history[it - _RAISE_WINDOW]).pow(1.0 / _RAISE_WINDOW)
    steady = (omega - 1.0 < rho) & (rho < 1.0) & torch.isfinite(rho)
    r = (rho + omega - 1.0) ** 2 / (rho * omega**2)
    new = _young_omega(r)
    return torch.where(active & steady & (new > omega + 0.01), new, omega)


def _priors(b, nb: int, k: int, like: torch.Tensor) -> torch.Tensor:
    """B x K column marginals, each positive and rescaled to sum to exactly 1."""
    if b is None:
        return torch.full((nb, k), 1.0 / k, dtype=like.dtype, device=like.device)
    b = torch.as_tensor(b).to(device=like.device, dtype=like.dtype)
    if b.dim() == 1:
        b = b.expand(nb, -1)
    if tuple(b.shape) != (nb, k):
        raise ValueError(f"sinkhorn_batched: b has shape {tuple(b.shape)}, expected ({k},) or ({nb}, {k})")
    if not bool(torch.all(b > 0)) or not bool(torch.all(torch.isfinite(b))):
        raise ValueError("sinkhorn_batched: b must be positive and finite (give a tiny mass, not 0)")
    totals = b.sum(dim=1, keepdim=True)
    if bool(((totals - 1.0).abs() > 1e-4).any()):
        raise ValueError("sinkhorn_batched: every prior b must sum to 1 (the rows' total)")
    return b / totals


def _one_by_one(scores, eps, b, n_iters, tol, distributed, overrelax) -> BatchedSinkhornResult:
    nb, _, k = scores.shape
    priors = [None] * nb if b is None else list(torch.as_tensor(b).to(scores.device, torch.float32).expand(nb, k))
    results = [sinkhorn(s, eps=eps, b=p, n_iters=n_iters, tol=tol, distributed=distributed, overrelax=overrelax) for s, p in zip(scores, priors)]
    return BatchedSinkhornResult(
        plan=torch.stack([r.plan for r in results]),
        n_iters=torch.tensor([r.n_iters for r in results]),
        error=torch.tensor([r.error for r in results]),
    )

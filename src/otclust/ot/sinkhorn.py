"""Entropic optimal transport between N samples and K clusters (Sinkhorn).

Every OT-based clustering method in this package (SeLa, SwAV, CLOT, the OT k-means loss) spends
its time here, on matrices of tens of thousands of samples by hundreds or thousands of clusters,
at temperatures small enough (eps down to 1e-3, CLOT's lambda up to 1000) that a plain
``exp(scores / eps)`` kernel under- and overflows in float32. Two textbook answers both fail one
of our needs:

* plain scaling iterations (``u = a / K v``, ``v = b / K^T u``) are as fast as the hardware allows,
  two matrix-vector products per iteration, but produce inf/NaN at small eps;
* log-domain iterations (a log-sum-exp per half-step) are stable but evaluate ``exp`` on the whole
  N x K matrix twice per iteration, an order of magnitude slower.

This module runs the scaling iterations on a float32 kernel and, whenever the scalings leave a
safe range, replaces that half-step by an exact log-domain one that absorbs the scalings into
log-potentials and rebuilds the kernel around them (the "stabilized" Sinkhorn of Schmitzer,
2019, with log-sum-exp absorptions). Absorptions are frequent only in the first iterations at
small eps, while the potentials travel far; afterwards nearly every iteration is two
``torch.mv`` on the kernel, which is the memory floor. See docs/performance.md for measurements.

Numerical conventions, which the rest of the package relies on:

* The kernel is formed as ``exp(scores/eps + potentials - max)``, each row or column having its
  largest entry exactly representable, and the exponent clamped at ``log(tiny)`` of the dtype. An
  entry below that floor (under 1e-38 relative to the largest in its row or column) therefore
  counts as 1.6e-38 instead of less. The scalings are kept within ``[1/TAU, TAU]`` with
  ``TAU**2 * floor`` around 1e-19, so those entries can never carry visible mass between two
  absorptions; an absorption recomputes them exactly from the scores. (The clamp is also needed
  for speed: vectorized ``exp`` takes a slow path below -87 that costs 10-40x a normal one.)
* Products of floor entries with small scalings are subnormal; x86 CPUs compute subnormals in
  microcode, so the solve runs with flush-to-zero enabled on the calling thread and restores the
  previous setting afterwards.
* The marginal error is relative: ``max_j |plan^T 1 - b|_j / b_j``, computed in float64 from the
  column sums the next half-step needs anyway. Rows are always exact at return (the last
  half-step is the row update), so this column error is the whole error. An absolute error would
  stall near 1e-6 on float32 data whatever the number of iterations; the relative one reaches
  about 1e-6 (the accuracy of a float32 matrix-vector product), so ``tol`` below ~1e-6 is not
  reachable in float32 and the solver then stops at ``n_iters``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["SinkhornResult", "sinkhorn"]


@dataclass
class SinkhornResult:
    """What a Sinkhorn solve returns.

    ``plan`` is ``exp(log_u[:, None] + scores / eps + log_v[None, :])`` (up to the kernel floor, see
    the module docstring); the potentials are returned in float64 (float32 where the device has no
    float64) because at small eps they are large numbers (|scores|/eps) whose float32 rounding
    would perturb a warm start.
    """

    plan: torch.Tensor  # N x K, rows sum to a (exactly, up to rounding), columns to b within `error`
    n_iters: int  # full iterations done (one column update and one row update each)
    error: float  # final max_j |column sum_j - b_j| / b_j of `plan`
    log_u: torch.Tensor  # N log row scalings: plan = diag(e^log_u) exp(scores/eps) diag(e^log_v)
    log_v: torch.Tensor  # K log column scalings; pass as warm_start to the next solve


# Vectorized exp falls into a slow scalar path below log(tiny); clamp just above it.
_EXP_FLOOR = {torch.float32: -87.0, torch.float64: -707.0}


def _check_every(device: torch.device, n: int, k: int) -> int:
    """Iterations between convergence/range tests.

    A test costs a handful of small kernels (and a device synchronisation on GPU); on a CPU it is
    negligible beside two products on a large matrix but not on a small one.
    """
    if device.type != "cpu":
        return 16
    return 1 if n * k >= (1 << 20) else 4


def _ftz_enabled() -> bool:
    x = torch.tensor([1e-30], dtype=torch.float32)
    return bool((x * 1e-10).item() == 0.0)


@contextmanager
def _flush_denormals(active: bool):
    """Turn flush-to-zero on for the duration of the solve and restore the caller's setting."""
    if not active:
        yield
        return
    was_on = _ftz_enabled()
    switched = False if was_on else torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if switched:
            torch.set_flush_denormal(False)


def _as_marginal(x, size: int, name: str, like: torch.Tensor, pot_dtype) -> torch.Tensor:
    if x is None:
        return torch.full((size,), 1.0 / size, dtype=pot_dtype, device=like.device)
    x = torch.as_tensor(x).to(device=like.device, dtype=pot_dtype).reshape(-1)
    if x.numel() != size:
        raise ValueError(f"sinkhorn: {name} has {x.numel()} entries, expected {size}")
    if not bool(torch.all(x > 0)) or not bool(torch.all(torch.isfinite(x))):
        raise ValueError(f"sinkhorn: {name} must be positive and finite (give a tiny mass, not 0)")
    return x


class _Solver:
    """State of one solve: kernel buffer, log-potentials alpha/beta (units of 1/eps) and scalings.

    Invariant: plan = u[:, None] * kernel * v[None, :] and
    kernel = exp(scores/eps + alpha[:, None] + beta[None, :]) (floored).
    """

    def __init__(self, scores, eps, a, b, beta0, pot_dtype, distributed):
        self.s = scores
        self.inv_eps = 1.0 / eps
        self.dtype = scores.dtype
        self.floor = _EXP_FLOOR[scores.dtype]
        self.log_tau = -self.floor / 4.0  # TAU**2 * exp(floor) ~ 1e-19 in float32
        self.tau = math.exp(self.log_tau)
        self.pot_dtype = pot_dtype
        self.distributed = distributed
        n, k = scores.shape
        self.a64, self.b64 = a, b
        self.a = a.to(self.dtype)
        self.b = b.to(self.dtype)
        self.log_a = torch.log(a)
        self.log_b = torch.log(b)
        self.kern = torch.empty_like(scores)
        self.alpha = torch.zeros(n, dtype=pot_dtype, device=scores.device)
        self.beta = beta0 if beta0 is not None else torch.zeros(k, dtype=pot_dtype, device=scores.device)
        self.u = torch.ones(n, dtype=self.dtype, device=scores.device)
        self.v = torch.ones(k, dtype=self.dtype, device=scores.device)
        self.kv = torch.empty(n, dtype=self.dtype, device=scores.device)
        self.ktu = torch.empty(k, dtype=self.dtype, device=scores.device)
        self.n_log_steps = 0

    # -- collective helpers (no-ops unless distributed) -------------------------------------
    def _allreduce(self, t, op="sum"):
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t

    def _any(self, flag: bool) -> bool:
        """A decision every process must take together (it changes the shared column frame)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.s.device)
        return bool(self._allreduce(t, "max").item() > 0)

    # -- exact log-domain half-steps that rebuild the kernel ----------------------------------
    def _check_potentials(self, x):
        if not bool(torch.all(torch.isfinite(x))):
            raise ValueError(
                "sinkhorn: non-finite potentials; scores contain NaN/+inf, or a whole row or column is -inf"
            )

    def log_row_step(self):
        """Row update in the log domain: absorbs v into beta, makes rows exact, u = v = 1."""
        self.beta = self.beta + torch.log(self.v.to(self.pot_dtype))
        t = self.kern
        torch.add(self.beta.to(self.dtype)[None, :], self.s, alpha=self.inv_eps, out=t)
        m = t.amax(dim=1)
        t.sub_(m[:, None]).clamp_(min=self.floor).exp_()
        rs = t.sum(dim=1, dtype=torch.float64).to(self.pot_dtype)
        self.alpha = self.log_a - m.to(self.pot_dtype) - torch.log(rs)
        self._check_potentials(self.alpha)
        t.mul_((self.a64 / rs).to(self.dtype)[:, None])
        self.u.fill_(1.0)
        self.v.fill_(1.0)
        self.n_log_steps += 1

    def log_col_step(self):
        """Column update in the log domain: absorbs u into alpha, makes columns exact, u = v = 1."""
        self.alpha = self.alpha + torch.log(self.u.to(self.pot_dtype))
        t = self.kern
        torch.add(self.alpha.to(self.dtype)[:, None], self.s, alpha=self.inv_eps, out=t)
        m = self._allreduce(t.amax(dim=0), "max")
        t.sub_(m[None, :]).clamp_(min=self.floor).exp_()
        cs = self._allreduce(t.sum(dim=0, dtype=torch.float64)).to(self.pot_dtype)
        self.beta = self.log_b - m.to(self.pot_dtype) - torch.log(cs)
        self._check_potentials(self.beta)
        t.mul_((self.b64 / cs).to(self.dtype)[None, :])
        self.u.fill_(1.0)
        self.v.fill_(1.0)
        self.n_log_steps += 1

    # -- scaling half-steps --------------------------------------------------------------------
    def col_products(self):
        torch.mv(self.kern.T, self.u, out=self.ktu)
        self._allreduce(self.ktu)

    def col_error(self) -> float:
        cs = self.v.to(torch.float64) * self.ktu.to(torch.float64)
        b = self.b64.to(torch.float64)
        return float(((cs - b).abs() / b).max())

    def _in_range(self, x) -> bool:
        lo, hi = torch.aminmax(x)
        # written so that NaN fails the test
        return bool(((lo >= 1.0 / self.tau) & (hi <= self.tau)).item())

    def col_update(self, checked: bool):
        torch.div(self.b, self.ktu, out=self.v)
        if checked and not self._in_range(self.v):  # v is identical on all processes
            self.log_col_step()

    def row_update(self, checked: bool):
        torch.mv(self.kern, self.v, out=self.kv)
        torch.div(self.a, self.kv, out=self.u)
        if checked and self._any(not self._in_range(self.u)):
            self.log_row_step()

    def state_ok(self) -> bool:
        """u and v finite and positive on every process (else a half-step overflowed)."""
        ok = True
        for x in (self.u, self.v):
            ok = ok and bool((torch.isfinite(x) & (x > 0)).all())
        return not self._any(not ok)

    def needs_absorption(self) -> bool:
        return self._any(not (self._in_range(self.u) and self._in_range(self.v)))

    def finish(self):
        plan = self.kern.mul_(self.u[:, None]).mul_(self.v[None, :])
        log_u = self.alpha + torch.log(self.u.to(self.pot_dtype))
        log_v = self.beta + torch.log(self.v.to(self.pot_dtype))
        return plan, log_u, log_v


def _warm_log_v(warm_start, k: int, device, pot_dtype):
    if warm_start is None:
        return None
    if isinstance(warm_start, SinkhornResult):
        log_v = warm_start.log_v
    elif isinstance(warm_start, (tuple, list)):
        log_v = warm_start[-1]
    else:
        log_v = warm_start
    log_v = torch.as_tensor(log_v).to(device=device, dtype=pot_dtype).reshape(-1)
    if log_v.numel() != k:
        raise ValueError(f"sinkhorn: warm_start log_v has {log_v.numel()} entries, expected {k}")
    if not bool(torch.all(torch.isfinite(log_v))):
        raise ValueError("sinkhorn: warm_start log_v must be finite")
    return log_v.clone()


def sinkhorn(
    scores: torch.Tensor,
    eps: float,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    n_iters: int | None = None,
    tol: float | None = None,
    warm_start=None,
    distributed: bool = False,
) -> SinkhornResult:
    """Entropic OT plan between N samples (rows) and K clusters (columns).

    Solves ``max_Q <Q, scores> + eps * H(Q)`` subject to ``Q 1_K = a`` and ``Q^T 1_N = b``, whose
    solution is ``Q = diag(u) exp(scores / eps) diag(v)``. ``scores`` are log-probabilities or
    negative costs: higher means "this sample fits this cluster better". For a cost matrix C, pass
    ``scores = -C``; for the CLOT/SeLa form ``Q = diag(u) P^lambda diag(v)``, pass
    ``sinkhorn(log P, eps=1/lambda)`` (P^lambda = exp(log P / eps)). Adding a constant to all
    scores, or to a whole row, does not change the plan (only log_u).

    Args:
        scores: N x K float tensor (float32 or float64; half precision is computed in float32).
            Its device and dtype are the solver's; it is not modified and needs no gradient (the
            solve runs under no_grad: a plan is a target, or differentiated via the envelope
            theorem, see ``ot_kmeans_loss``). ``-inf`` entries are allowed but count as the kernel
            floor (~1e-38 of their row's largest entry), not as exactly forbidden.
        eps: entropic temperature in the units of ``scores`` (> 0). Smaller is closer to exact OT
            and needs more iterations.
        a: N row masses (> 0); defaults to 1/N each (the global N when ``distributed``).
        b: K cluster-size prior (> 0, sums to the same total as a, usually 1); defaults to 1/K.
        n_iters: maximum number of full iterations (a column then a row update). Defaults to 1000
            when ``tol`` is given, else 100.
        tol: stop as soon as ``max_j |Q^T 1 - b|_j / b_j <= tol`` (relative; rows are exact).
            None runs exactly ``n_iters`` iterations. In float32, tol below ~1e-6 is not
            reachable (matrix-vector products are accurate to about that), so the solve would run
            to ``n_iters``.
        warm_start: a previous ``SinkhornResult``, a ``(log_u, log_v)`` pair or a ``log_v`` tensor
            on the same K clusters. Only log_v is used: the first half-step is the row update,
            which overwrites any row potential, so the warm start also works across batches of
            different samples.
        distributed: if True and ``torch.distributed`` is initialized, this process holds some
            rows of a global problem (SwAV's distributed Sinkhorn): column sums are all-reduced so
            every process ends with its rows of the global plan. ``a`` must then hold this
            process's rows' masses out of the global total (default 1/N_global each).

    Returns:
        SinkhornResult(plan in the dtype of ``scores``, n_iters, error, log_u, log_v).
    """
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn: scores must be N x K, got shape {tuple(scores.shape)}")
    eps = float(eps)
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"sinkhorn: eps must be positive and finite, got {eps}")
    if tol is not None and not tol > 0:
        raise ValueError(f"sinkhorn: tol must be positive, got {tol}")
    if n_iters is None:
        n_iters = 1000 if tol is not None else 100
    n_iters = int(n_iters)
    if n_iters < 0:
        raise ValueError(f"sinkhorn: n_iters must be >= 0, got {n_iters}")

    in_dtype = scores.dtype
    work_dtype = torch.float64 if in_dtype == torch.float64 else torch.float32
    device = scores.device
    pot_dtype = torch.float32 if device.type == "mps" else torch.float64

    if distributed:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    with torch.no_grad():
        s = scores.detach()
        if s.dtype != work_dtype:
            s = s.to(work_dtype)
        n, k = s.shape
        if n == 0 or k == 0:
            raise ValueError("sinkhorn: scores must have at least one row and one column")

        if a is None and distributed:
            n_total = torch.tensor([float(n)], device=device)
            torch.distributed.all_reduce(n_total)
            a = torch.full((n,), 1.0 / float(n_total.item()), dtype=pot_dtype, device=device)
        a = _as_marginal(a, n, "a", s, pot_dtype)
        b = _as_marginal(b, k, "b", s, pot_dtype)
        sum_a = a.sum()
        if distributed:
            torch.distributed.all_reduce(sum_a)
        if abs(float(sum_a) - float(b.sum())) > 1e-4 * float(b.sum()):
            raise ValueError(
                f"sinkhorn: a sums to {float(sum_a):.6g} but b to {float(b.sum()):.6g}; balanced OT needs equal totals"
            )

        beta0 = _warm_log_v(warm_start, k, device, pot_dtype)
        solver = _Solver(s, eps, a, b, beta0, pot_dtype, distributed)
        every = _check_every(device, n, k)
        use_tol = tol is not None

        with _flush_denormals(device.type == "cpu"):
            solver.log_row_step()  # builds the kernel; rows exact from here on
            it = 0
            saved = (solver.u.clone(), solver.v.clone(), 0)
            careful_until = -1  # test every half-step before using it, up to this iteration
            error = math.inf
            while True:
                careful = it < careful_until
                test = careful or it % every == 0 or it >= n_iters
                if test and not careful:
                    # Untested half-steps ran since the last test. If one over/underflowed, go
                    # back to the last good state and redo them testing each one, so that the
                    # offending half-step becomes a log-domain one. The kernel has not changed
                    # since `saved` (only tested half-steps rebuild it), so going back is exact.
                    if not solver.state_ok():
                        solver.u.copy_(saved[0])
                        solver.v.copy_(saved[1])
                        careful_until, it = it, saved[2]
                        continue
                    if solver.needs_absorption():
                        solver.log_row_step()
                    saved = (solver.u.clone(), solver.v.clone(), it)
                solver.col_products()
                if test:
                    error = solver.col_error()
                    if it >= n_iters or (use_tol and error <= tol):
                        break
                solver.col_update(test)
                solver.row_update(test)
                it += 1
            plan, log_u, log_v = solver.finish()

    if plan.dtype != in_dtype:
        plan = plan.to(in_dtype)
    return SinkhornResult(plan=plan, n_iters=it, error=error, log_u=log_u, log_v=log_v)

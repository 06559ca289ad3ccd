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
2019, with log-sum-exp absorptions). Absorptions are frequent only while the potentials travel
far (small eps, peaked scores); otherwise an iteration is two matrix-vector products with the
kernel plus O(N + K) vector work. On a CPU, large problems go further: the row update and the
next column product share one pass over the kernel, block by block while each block is in
cache, so the kernel is read from memory once per iteration, not twice (see
``_Solver._fused_row_pass``). See docs/performance.md for measurements.

Small eps also makes Sinkhorn need many iterations (tens of thousands at eps = 1e-3 on peaked
log-probabilities). Once the measured convergence rate shows a slow problem, the iterations are
over-relaxed (Thibault et al., 2017) with a per-coordinate bound that keeps each half-step a dual
ascent step (after Lehmann et al., 2021), which typically cuts the iteration count 5-20x and
leaves fast problems untouched. ``overrelax=False`` gives plain Sinkhorn.

Numerical conventions, which the rest of the package relies on:

* The kernel is formed as ``exp(scores/eps + potentials - max)`` (computed with exp2), each row or
  column having its largest entry exactly 1, and the exponent clamped at ``log(tiny)`` of the
  dtype. An entry below that floor (under 1.2e-38 relative to the largest in its row or column)
  therefore counts as 1.2e-38 instead of less. The scalings are kept within ``[1/TAU, TAU]``
  with ``TAU**2 * floor`` around 1e-19, so those entries can never carry visible mass between
  two absorptions; an absorption recomputes them exactly from the scores. (The clamp is also
  needed for speed: vectorized exp/exp2 take a slow path below the floor that costs 3-40x.)
* Products of floor entries with small scalings are subnormal; x86 CPUs compute subnormals in
  microcode, so the solve runs with flush-to-zero enabled on the calling thread and restores the
  previous setting afterwards.
* The marginal error is relative: ``max_j |plan^T 1 - b|_j / b_j``, computed from the column
  sums the next half-step needs anyway. Rows are always exact at return (the last half-step is a
  plain row update), so this column error is the whole error. An absolute error would stall near
  1e-6 on float32 data whatever the number of iterations. The column sums themselves are
  accumulated blockwise (see ``_Solver._kt_times``): a plain float32 gemv over N = 65536 rows is
  only accurate to ~6e-5, blocked sums to ~5e-7 at any N, so in float32 any ``tol`` >= ~2e-6 is
  reachable and smaller ones make the solve run to ``n_iters``.
"""

from __future__ import annotations

import math
import os
from collections import deque
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
    n_log_steps: int = 0  # exact log-domain half-steps taken (kernel rebuilds), for diagnostics
    omega: float = 1.0  # over-relaxation factor in use at the end (1 = plain Sinkhorn)


# Kernels are built with exp2 (40% faster than exp on CPU), whose vectorized code falls into a
# slow path below log2(tiny): exponents are clamped there (base-2 units; 2^-126 = 1.2e-38).
_EXP2_FLOOR = {torch.float32: -126.0, torch.float64: -1022.0}
_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)
# Relative marginal error reachable in each dtype (accuracy of the products with the kernel).
_ERR_FLOOR = {torch.float32: 3e-6, torch.float64: 1e-12}
# Rows per block in the column sums K^T u (see _Solver._kt_times), for torch's and numpy's BLAS.
_ROW_BLOCK = 512
_ROW_BLOCK_NUMPY = 1024
# From this many kernel entries on, CPU products go through numpy's BLAS (see _numpy_blas).
_NUMPY_MIN_SIZE = 1 << 16
# Bytes of kernel per block in the fused row pass: stays in L2/L3 between its two uses.
_FUSED_BLOCK_BYTES = 2 << 20

# Over-relaxation (see _Solver.relaxed_update and _Solver.adapt_omega).
_OMEGA_MAX = 1.95  # above this the fastest modes decay too slowly (rate omega - 1)
_RATE_WINDOW = 10  # iterations over which a convergence rate is measured
# The column error of an over-relaxed iterate overstates that of the same iterate with exact rows
# (often 10-30x), so within _PROBE_FACTOR of tol the latter is measured every _PROBE_EVERY
# iterations, at the price of one extra product (see _Solver.probe).
_PROBE_FACTOR = 100.0
_PROBE_EVERY = 10


def _check_every(device: torch.device, n: int, k: int) -> int:
    """Iterations between convergence/range tests.

    A test costs a handful of small kernels (and a device synchronisation on GPU); on a CPU it is
    negligible beside two products on a large matrix but not on a small one.
    """
    if device.type != "cpu":
        return 16
    if n * k >= (1 << 20):
        return 1
    return 4 if n * k >= (1 << 16) else 8


_blas_controller = None


def _numpy_blas():
    """numpy, if its BLAS can run the CPU products; else None (torch.mv is used).

    Measured on an AMD EPYC (Zen 3) with one thread: numpy's OpenBLAS runs float32 gemv 15-25%
    faster than torch's MKL build, and its calls cost ~1 us against torch's ~5-10 us, which the
    fused row pass (tens of calls per iteration) needs. Using it needs its thread count tied to
    torch's for the solve, hence threadpoolctl (a scikit-learn dependency); without it, or with
    OTCLUST_TORCH_BLAS=1 in the environment, torch's BLAS is used.
    """
    global _blas_controller
    if os.environ.get("OTCLUST_TORCH_BLAS", "") not in ("", "0"):
        return None
    try:
        import numpy as np
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()
    return np


@contextmanager
def _blas_threads(active: bool):
    """numpy's BLAS limited to torch's thread count while the solve runs."""
    if not active or _blas_controller is None:
        yield
        return
    with _blas_controller.limit(limits=torch.get_num_threads(), user_api="blas"):
        yield


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


def as_marginal(x, size: int, name: str, like: torch.Tensor, pot_dtype) -> torch.Tensor:
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

    def __init__(self, scores, eps, a, b, beta0, pot_dtype, distributed, overrelax):
        self.s = scores
        self.inv_eps = 1.0 / eps
        self.dtype = scores.dtype
        self.floor2 = _EXP2_FLOOR[scores.dtype]
        self.log_tau = -self.floor2 * _LN2 / 4.0  # TAU**2 * 2^floor2 ~ 1e-19 in float32
        self.tau = math.exp(self.log_tau)
        self.s_min = None  # min of the scores, computed at the first kernel build
        self.pot_dtype = pot_dtype
        self.distributed = distributed
        dev = scores.device
        n, k = scores.shape
        self.a64, self.b64 = a, b
        self.a = a.to(self.dtype)
        self.b = b.to(self.dtype)
        self.inv_b = (1.0 / b).to(self.dtype)
        self.kern = torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)  # contiguous
        self.alpha = torch.zeros(n, dtype=pot_dtype, device=dev)
        self.beta = beta0 if beta0 is not None else torch.zeros(k, dtype=pot_dtype, device=dev)
        self.u = torch.ones(n, dtype=self.dtype, device=dev)
        self.v = torch.ones(k, dtype=self.dtype, device=dev)
        self.kv = torch.empty(n, dtype=self.dtype, device=dev)
        self.ktu = torch.empty(k, dtype=self.dtype, device=dev)
        # CPU products through numpy's BLAS (see _numpy_blas) for large problems, else torch's
        self.np_kern = None
        self._np = _numpy_blas() if dev.type == "cpu" and n * k >= _NUMPY_MIN_SIZE else None
        if self._np is not None:
            self.np_kern = self.kern.numpy()
        bs = _ROW_BLOCK_NUMPY if self._np is not None else _ROW_BLOCK
        self.fused = None  # (rows per block, block sums) of the fused row pass
        self.ktu_fresh = False
        if self._np is not None:
            rows = max(64, min(4096, 1 << round(math.log2(_FUSED_BLOCK_BYTES / (k * scores.element_size())))))
            if n >= 2 * rows:
                self.fused = (rows, self._np.empty((-(-n // rows), k), dtype=self.np_kern.dtype))
        self.blocks = None
        if dev.type == "cpu" and n >= 2 * bs:
            self.blocks = (n // bs, bs, (n // bs) * bs)
            self.partial = torch.empty(n // bs, 1, k, dtype=self.dtype, device=dev)
        self.rows_exact = False
        self.n_log_steps = 0
        self.overrelax = overrelax
        self.omega = 1.0
        self.omega_since = 0  # iteration at which omega last changed
        self.err_floor = _ERR_FLOOR[self.dtype]
        self.history: deque = deque(maxlen=8 * _RATE_WINDOW)

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
    def _check_potentials(self, *xs):
        for x in xs:
            if not bool(torch.all(torch.isfinite(x))):
                raise ValueError(
                    "sinkhorn: non-finite potentials; scores contain NaN/+inf, or a whole row or column is -inf"
                )

    def _build_kernel(self, pot, dim: int):
        """kernel = 2^(T - max_dim T), T = (scores/eps + pot) / ln 2, pot along the other axis.

        Returns the natural-log shift m (kernel = exp(scores/eps + pot - m)) and the sums of the
        kernel along `dim`. Five passes over N x K: add, max, subtract, exp2, sum; a clamp pass
        only when the scores' range over eps can reach the exp2 floor.
        """
        t = self.kern
        shape = (1, -1) if dim == 1 else (-1, 1)
        torch.add((pot * _LOG2E).to(self.dtype).view(shape), self.s, alpha=self.inv_eps * _LOG2E, out=t)
        m2 = t.amax(dim=dim)
        if dim == 0:
            m2 = self._allreduce(m2, "max")
        if self.s_min is None:
            self.s_min = float(self.s.amin())
        lowest = (self.s_min * self.inv_eps + float(pot.min())) * _LOG2E - float(m2.max())
        t.sub_(m2.unsqueeze(dim))
        if not lowest > self.floor2:  # also when NaN / -inf
            t.clamp_(min=self.floor2)
        t.exp2_()
        if dim == 1:
            # float32 row sums are pairwise (accurate); sum(dtype=float64) would copy K to float64
            sums = t.sum(dim=1).to(self.pot_dtype)
        else:
            self.u.fill_(1.0)
            sums = self._kt_times(self.u, self.ktu).to(self.pot_dtype)  # blocked and all-reduced
        return m2.to(self.pot_dtype) * _LN2, sums

    def log_row_step(self):
        """Row update in the log domain: absorbs v into beta, rebuilds the kernel, rows exact.

        The kernel is not rescaled to the new row sums (that would be one more pass): the exact
        row scaling goes into u, with its geometric mean moved to v so both stay near 1 in range.
        """
        self.beta = self.beta + torch.log(self.v.to(self.pot_dtype))
        m, rs = self._build_kernel(self.beta, dim=1)
        self.alpha = -m
        scale = self.a64 / rs
        self._check_potentials(self.alpha, scale)
        # v is shared by all processes, so c must be too: a global geometric mean
        count = torch.tensor(float(scale.numel()), dtype=scale.dtype, device=scale.device)
        stats = self._allreduce(torch.stack([torch.log(scale).sum(), count]))
        c = torch.exp(stats[0] / stats[1])
        self.u.copy_(scale / c.sqrt())
        self.v.fill_(float(c.sqrt()))
        self.rows_exact = True
        self.ktu_fresh = False
        self.n_log_steps += 1

    def log_col_step(self):
        """Column update in the log domain: absorbs u into alpha, rebuilds the kernel, columns exact."""
        self.alpha = self.alpha + torch.log(self.u.to(self.pot_dtype))
        m, cs = self._build_kernel(self.alpha, dim=0)
        self.beta = -m
        scale = self.b64 / cs
        self._check_potentials(self.beta, scale)
        c = torch.exp(torch.log(scale).mean())
        self.v.copy_(scale / c.sqrt())
        self.u.fill_(float(c.sqrt()))
        self.rows_exact = False
        self.ktu_fresh = False
        self.n_log_steps += 1

    # -- scaling half-steps --------------------------------------------------------------------
    def _kt_times(self, u, out):
        """out = K^T u, accurate to ~5e-7 relative however many rows K has.

        A BLAS gemv sums each column's N products sequentially in float32, so its relative error
        grows like sqrt(N) eps: 2e-5 at N = 16384, 6e-5 at 65536, which would put tol = 1e-5 out
        of reach. On CPU the rows are therefore cut into blocks, one batched
        ``u_block^T K_block`` product gives the per-block sums (the same single pass over K, as
        fast as gemv) and the block sums are added by a pairwise reduction. GPU gemv kernels
        already reduce in a tree.
        """
        if self.blocks is None:
            torch.mv(self.kern.T, u, out=out)
        else:
            nb, bs, nfull = self.blocks
            if self.np_kern is not None:
                np_u = u.numpy()
                self._np.matmul(np_u[:nfull].reshape(nb, 1, bs), self.np_kern[:nfull].reshape(nb, bs, -1),
                                out=self.partial.numpy())
            else:
                kb = self.kern[:nfull].view(nb, bs, -1)
                torch.matmul(u[:nfull].view(nb, 1, bs), kb, out=self.partial)
            torch.sum(self.partial.view(nb, -1), dim=0, out=out)
            if nfull < u.numel():
                out.add_(torch.mv(self.kern[nfull:].T, u[nfull:]))
        return self._allreduce(out)

    def _k_times(self, v, out):
        """out = K v (row sums of K diag(v): K terms each, accurate as they are)."""
        if self.np_kern is not None:
            self._np.dot(self.np_kern, v.numpy(), out=out.numpy())
        else:
            torch.mv(self.kern, v, out=out)
        return out

    def col_products(self):
        if self.ktu_fresh:  # the fused row pass has computed the block sums already
            torch.sum(torch.from_numpy(self.fused[1]), dim=0, out=self.ktu)
            self._allreduce(self.ktu)
        else:
            self._kt_times(self.u, self.ktu)
        self.ktu_fresh = False

    def col_error(self) -> float:
        """max_j |v_j (K^T u)_j / b_j - 1|: the relative column error of the current plan.

        No sum is involved (the sums are the products, accurate to ~5e-7 relative in float32),
        so the working dtype is precise enough: it adds only ~1e-7 of rounding.
        """
        return float((self.v * self.ktu).mul_(self.inv_b).sub_(1.0).abs_().max())

    def _in_range(self, x) -> bool:
        lo, hi = torch.aminmax(x)
        # written so that NaN fails the test
        return bool(((lo >= 1.0 / self.tau) & (hi <= self.tau)).item())

    def relaxed_update(self, scale, products, target):
        """scale <- scale * ratio ** w with ratio = target / (scale * products) (over-relaxed).

        Plain Sinkhorn is w = 1. Over-relaxation (Thibault et al., 2017) moves each log-potential
        w times as far; on slow problems (small eps, peaked scores) it often saves 5-20x iterations.
        Too large a step can decrease the dual objective and stall or cycle, so w is capped per
        coordinate: along one coordinate whose plain step is t = log(ratio) (in units of eps) the
        dual changes by a positive multiple of ``w t e^t - e^(w t) + 1``, which is positive for
        every w in (0, 2) when t < 0 and, when t > 0, for w up to a bound that decreases with t;
        ``1 + 1 / (1 + t/2)`` stays strictly under that bound (checked numerically on [0, 60]).
        Every half-step is then a dual ascent step, which keeps the convergence guarantee of
        plain Sinkhorn (the safeguard of Lehmann et al., 2021, taken coordinate-wise).
        """
        ratio = torch.div(target, scale * products)
        t = ratio.log_()
        w = t.clamp_min(0.0).mul_(0.5).add_(1.0).reciprocal_().add_(1.0).clamp_(max=self.omega)
        scale.mul_(w.mul_(t).exp_())

    def col_update(self, checked: bool):
        if self.omega == 1.0:
            torch.div(self.b, self.ktu, out=self.v)
        else:
            self.relaxed_update(self.v, self.ktu, self.b)
        if checked and not self._in_range(self.v):  # v is identical on all processes
            self.log_col_step()

    def row_update(self, checked: bool, plain: bool = False):
        if self.fused is not None and (plain or self.omega == 1.0):
            self._fused_row_pass()
            self.rows_exact = True
        else:
            self._k_times(self.v, self.kv)
            if plain or self.omega == 1.0:
                torch.div(self.a, self.kv, out=self.u)
                self.rows_exact = True
            else:
                self.relaxed_update(self.u, self.kv, self.a)
                self.rows_exact = False
        if checked and self._any(not self._in_range(self.u)):
            self.log_row_step()

    def _fused_row_pass(self):
        """Row update and the next iteration's K^T u in one pass over K, block by block.

        u = a / K v only needs each block's own rows, so while a block of K (~2 MB) is still in
        cache after ``K_b v`` its ``u_b^T K_b`` is taken too: K comes from memory once per
        iteration instead of twice. The per-block sums double as the blocked accumulation of
        _kt_times. Plain updates only; over-relaxed ones take the two-pass route.
        """
        np_ = self._np
        bs, partial = self.fused
        kern, v, kv, u, a = self.np_kern, self.v.numpy(), self.kv.numpy(), self.u.numpy(), self.a.numpy()
        for i, start in enumerate(range(0, kern.shape[0], bs)):
            rows = slice(start, start + bs)
            kb = kern[rows]
            np_.dot(kb, v, out=kv[rows])
            np_.divide(a[rows], kv[rows], out=u[rows])
            np_.dot(u[rows], kb, out=partial[i])
        self.ktu_fresh = True

    def adapt_omega(self, it: int, error: float):
        """Choose omega from measured convergence rates (Young's SOR theory).

        For a linear iteration whose plain (Gauss-Seidel) rate is r, the optimal relaxation is
        omega* = 2 / (1 + sqrt(1 - r)) (Thibault et al. use the same rule for Sinkhorn). r is first
        measured over _RATE_WINDOW plain iterations; fast problems (r < 0.5) stay plain, where
        over-relaxation gains little and would slow the fastest modes. The early rate is often
        faster than the asymptotic one, so later the rate rho observed under omega is turned back
        into r by Young's relation (rho + omega - 1)^2 = rho omega^2 r, and omega is raised if
        that calls for more. It is never lowered: the per-coordinate bound in relaxed_update,
        not omega, is what keeps a step safe.
        """
        self.history.append((it, error))
        if not self.overrelax or not math.isfinite(error) or error < self.err_floor:
            return  # below err_floor the error is rounding noise and says nothing of the rate
        window = _RATE_WINDOW if self.omega == 1.0 else 4 * _RATE_WINDOW
        if it - self.omega_since < window:
            return
        for it0, err0 in reversed(self.history):
            if it0 <= it - window:
                break
        else:
            return
        if not (err0 > 0 and math.isfinite(err0)):
            return
        rate = (error / err0) ** (1.0 / (it - it0))
        if self.omega == 1.0:
            if rate > 0.5:
                r = rate
            else:
                return
        else:
            w = self.omega
            if not (w - 1.0 < rate < 1.0):  # at or past the optimum, or no steady decrease
                return
            r = (rate + w - 1.0) ** 2 / (rate * w * w)
        new = _OMEGA_MAX if r >= 1.0 else min(_OMEGA_MAX, 2.0 / (1.0 + math.sqrt(1.0 - r)))
        if new > self.omega + 0.01:
            self.omega = new
            self.omega_since = it

    def probe(self, tol: float) -> bool:
        """Would the current iterate meet tol with exact rows? If so, make it the final state.

        Uses the K v of the last row update, so the only extra cost is one K^T u product.
        """
        u_plain = torch.div(self.a, self.kv)
        ktu = self._kt_times(u_plain, torch.empty_like(self.ktu))
        cs = self.v.to(torch.float64) * ktu.to(torch.float64)
        b = self.b64.to(torch.float64)
        if float(((cs - b).abs() / b).max()) > tol:
            return False
        self.u.copy_(u_plain)
        self.ktu.copy_(ktu)
        self.rows_exact = True
        return True

    def scalings_status(self) -> str:
        """'ok', 'absorb' (finite but outside [1/TAU, TAU]) or 'bad' (0, inf or NaN somewhere).

        One reduction per vector and one synchronisation; agreed on by all processes.
        """
        lu, hu = torch.aminmax(self.u)
        lv, hv = torch.aminmax(self.v)
        lo, hi = torch.stack([lu, lv]).min(), torch.stack([hu, hv]).max()
        vals = torch.stack([lo, hi]).tolist()
        lo, hi = vals
        # comparisons written so that NaN lands in 'bad'
        if not (lo > 0.0 and hi < math.inf):
            status = 2
        elif not (lo >= 1.0 / self.tau and hi <= self.tau):
            status = 1
        else:
            status = 0
        if self.distributed:
            t = torch.tensor([float(status)], device=self.s.device)
            status = int(self._allreduce(t, "max").item())
        return ("ok", "absorb", "bad")[status]

    def finish(self):
        plan = self.kern.mul_(self.u[:, None]).mul_(self.v[None, :])
        log_u = self.alpha + torch.log(self.u.to(self.pot_dtype))
        log_v = self.beta + torch.log(self.v.to(self.pot_dtype))
        return plan, log_u, log_v


def checked_eps(eps, caller: str) -> float:
    """eps as a float, refused unless positive and finite (shared by the solvers)."""
    eps = float(eps)
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"{caller}: eps must be positive and finite, got {eps}")
    return eps


def iteration_cap(n_iters, tol, caller: str) -> int:
    """Validated iteration cap: 1000 when a tolerance decides, else 100 (shared by the solvers)."""
    if tol is not None and not tol > 0:
        raise ValueError(f"{caller}: tol must be positive, got {tol}")
    if n_iters is None:
        n_iters = 1000 if tol is not None else 100
    n_iters = int(n_iters)
    if n_iters < 0:
        raise ValueError(f"{caller}: n_iters must be >= 0, got {n_iters}")
    return n_iters


def several_processes() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _check_same_everywhere(values: list[torch.Tensor], message: str) -> None:
    """Raise the same ValueError on every process unless they all passed the same values.

    Processes that disagree on the prior or the stopping rule would stop after different
    iterations, and the first one to leave the loop would leave the others waiting forever in an
    all-reduce; failing on all of them at once is the only useful outcome. One small collective
    per tensor, compared to within 1e-6 of its largest entry; the first tensor must have the same
    length everywhere (sizes and settings), so that the later ones cannot be mis-sized.
    """
    import torch.distributed as dist

    for value in values:
        value = value.to(torch.float64).reshape(-1)
        both = torch.cat([value, -value])
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        n = value.numel()
        if float((both[:n] + both[n:]).abs().max()) > 1e-6 * max(float(value.abs().max()), 1e-30):
            raise ValueError(message)


def _warm_log_v(warm_start, k: int, device, pot_dtype):
    if warm_start is None:
        return None
    if isinstance(warm_start, (tuple, list)):
        log_v = warm_start[-1]
    else:  # a result of sinkhorn or sinkhorn_labels, or a log_v tensor
        log_v = getattr(warm_start, "log_v", warm_start)
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
    overrelax: bool = True,
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
        b: K cluster-size prior (> 0, sums to the same total as a, usually 1, to within 1e-4; it
            is rescaled to a's exact total); defaults to 1/K.
        n_iters: maximum number of full iterations (a column then a row update). Defaults to 1000
            when ``tol`` is given, else 100.
        tol: stop as soon as ``max_j |Q^T 1 - b|_j / b_j <= tol`` (relative; rows are exact).
            None runs exactly ``n_iters`` iterations. In float32, tol below ~2e-6 is not
            reachable (the column sums are accurate to ~5e-7), so the solve would run to
            ``n_iters``; float64 scores reach ~1e-12.
        warm_start: a previous ``SinkhornResult``, a ``(log_u, log_v)`` pair or a ``log_v`` tensor
            on the same K clusters. Only log_v is used: the first half-step is the row update,
            which overwrites any row potential, so the warm start also works across batches of
            different samples.
        distributed: if True and ``torch.distributed`` is initialized, this process holds some
            rows of a global problem (SwAV's distributed Sinkhorn): column sums are all-reduced so
            every process ends with its rows of the global plan. ``a`` must then hold this
            process's rows' masses out of the global total (default 1/N_global each).
        overrelax: allow over-relaxed iterations when plain Sinkhorn converges slowly (default).
            The fixed point, hence the plan, is the same; only the path to it is shorter.

    Returns:
        SinkhornResult(plan in the dtype of ``scores``, n_iters, error, log_u, log_v).
    """
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn: scores must be N x K, got shape {tuple(scores.shape)}")
    eps = checked_eps(eps, "sinkhorn")
    n_iters = iteration_cap(n_iters, tol, "sinkhorn")
    in_dtype = scores.dtype
    work_dtype = torch.float64 if in_dtype == torch.float64 else torch.float32
    device = scores.device
    pot_dtype = torch.float32 if device.type == "mps" else torch.float64
    distributed = distributed and several_processes()

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
        a = as_marginal(a, n, "a", s, pot_dtype)
        b = as_marginal(b, k, "b", s, pot_dtype)
        sum_a = a.sum()
        if distributed:
            torch.distributed.all_reduce(sum_a)
        if abs(float(sum_a) - float(b.sum())) > 1e-4 * float(b.sum()):
            raise ValueError(
                f"sinkhorn: a sums to {float(sum_a):.6g} but b to {float(b.sum()):.6g}; balanced OT needs equal totals"
            )
        # float32 priors are off by rounding; an exact match lets the error go below that
        b = b * (sum_a / b.sum())
        if distributed:
            settings = [float(k), eps, -1.0 if tol is None else float(tol), float(n_iters), float(overrelax)]
            _check_same_everywhere(
                [torch.tensor(settings, device=b.device), b],
                "sinkhorn(distributed=True): processes passed different cluster priors b or settings (K, eps, tol, "
                "n_iters, overrelax); every process must solve the same problem",
            )

        beta0 = _warm_log_v(warm_start, k, device, pot_dtype)
        solver = _Solver(s, eps, a, b, beta0, pot_dtype, distributed, overrelax)
        every = _check_every(device, n, k)
        probe_every = every * max(1, -(-_PROBE_EVERY // every))  # a multiple of `every`
        use_tol = tol is not None

        with _flush_denormals(device.type == "cpu"), _blas_threads(solver.np_kern is not None):
            solver.log_row_step()  # builds the kernel; rows exact from here on
            it = 0
            saved_u, saved_v = solver.u.clone(), solver.v.clone()
            saved_it, saved_exact = 0, True
            careful_until = -1  # test every half-step before using it, up to this iteration
            error = math.inf
            while True:
                careful = it < careful_until
                test = careful or it % every == 0 or it >= n_iters
                if test and not careful:
                    # Untested half-steps ran since the last test. If one over/underflowed, go
                    # back to the last good state and redo them testing each one, so that the
                    # offending half-step becomes a log-domain one. The kernel has not changed
                    # since the save (only tested half-steps rebuild it), so going back is exact.
                    status = solver.scalings_status()
                    if status == "bad":
                        solver.u.copy_(saved_u)
                        solver.v.copy_(saved_v)
                        solver.ktu_fresh = False
                        careful_until, it, solver.rows_exact = it, saved_it, saved_exact
                        continue
                    if status == "absorb":
                        solver.log_row_step()
                    saved_u.copy_(solver.u)
                    saved_v.copy_(solver.v)
                    saved_it, saved_exact = it, solver.rows_exact
                solver.col_products()
                if test:
                    error = solver.col_error()
                    if it >= n_iters or (use_tol and error <= tol):
                        if solver.rows_exact:
                            break
                        # The last row update was over-relaxed: make rows exact, then test the
                        # columns of that final state again.
                        solver.row_update(checked=True, plain=True)
                        continue
                    if (
                        use_tol
                        and not solver.rows_exact
                        and error <= _PROBE_FACTOR * tol
                        and it % probe_every == 0
                        and solver.probe(tol)
                    ):
                        error = solver.col_error()
                        break
                    solver.adapt_omega(it, error)
                solver.col_update(careful)
                solver.row_update(careful)
                it += 1
            plan, log_u, log_v = solver.finish()

    if plan.dtype != in_dtype:
        plan = plan.to(in_dtype)
    return SinkhornResult(
        plan=plan,
        n_iters=it,
        error=error,
        log_u=log_u,
        log_v=log_v,
        n_log_steps=solver.n_log_steps,
        omega=solver.omega,
    )

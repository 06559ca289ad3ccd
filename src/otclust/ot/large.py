"""Sinkhorn hard labels for data sets whose N x K score matrix does not fit in memory.

SeLa labels the whole training set with the argmax of an entropic OT plan: at ImageNet scale,
N = 1,280,000 samples and K = 3,000 clusters, the float32 score matrix alone is 15.4 GB, so the
dense ``otclust.ot.sinkhorn`` (which also builds an N x K kernel beside it) cannot be used. This
module stores the scores in one byte per entry and runs the scaling iterations block by block
over those bytes: N x K bytes is 3.84 GB at that size, and nothing else of size N x K is ever
allocated. Only what SeLa needs is computed, the hard labels ``argmax_k Q_ik`` of

    Q = diag(u) exp(scores / eps) diag(v),  rows summing to 1/N, columns to the prior b;

the plan itself is never materialised.

Quantization (``QuantizedScores``, ``quantize_scores``)
-------------------------------------------------------
Row i is stored as 8-bit codes of ``x_ik = s_ik / eps + w_k`` below the row's maximum, on the
uniform grid ``-step_i * c``, ``c = 0 .. 255``, whose step is the row's own
``step_i = min(depth, max_j x_ij - min_j x_ij) / 255``:

    code_ik = min(255, round((max_j x_ij - x_ik) / step_i)),   kernel entry K_ik = exp(-step_i * code_ik).

``w`` are optional column offsets (default 0; SeLa passes the previous labelling's log v, see
below). Neither the row maximum nor w changes the plan (a per-row factor goes into u, a
per-column one into v), so each row's largest kernel entry is exactly 1, and the only per-row
number stored is step_i (4 bytes a row beside K bytes of codes). What the solver computes is
then exactly the entropic OT plan of the rounded scores
``s'_ik = eps * (max_j x_ij - w_k - step_i * code_ik)``, which differ from the given ones by at
most ``eps * step_i / 2 <= eps * depth / 510`` per entry, except that in a row spanning more than
``depth`` (units of 1/eps) the entries more than ``depth`` below its maximum count as ``depth``
below instead of further: the grid's floor.

* Labels: the label of row i is ``argmax_k (x_ik + log v_k)``; rounding moves every candidate by
  at most ``step_i / 2``, so a label can change only where the two best candidates are within
  ``step_i`` of each other (a near-tie), plus through the small change of v that the rounding
  causes. Default depth 64: step at most 0.25, i.e. 0.01 nats of log-probability at SeLa's
  eps = 0.04 (on log-softmax of N(0, 1) logits, 5000 x 50, 99.7% of the labels are those of the
  dense float64 solution; tests/ot/test_large.py). The row's own step matters for unconfident networks (SeLa's first labelling, from
  a random network): their rows span a few units at most, so a fixed step of 0.25 would make
  most rows near-ties and their labels an artefact of rounding; scaled to the row's span, the
  step is 1/255 of it.
* The floor, like the dense solver's kernel floor, counts as ``exp(-depth)`` (1.6e-28) of the
  row's largest entry, never 0: every column keeps some mass, so the iterations cannot produce
  inf/NaN even for a cluster that no sample wants. It matters where a column's scaling must
  exceed others' by nearly ``depth``: a cluster that few samples prefer then takes its share
  from samples that score it more than ``depth`` below their best, whose entries for it all sit
  on the floor, so which of them it gets is arbitrary and the hard labels are no longer
  balanced. This happens: at eps = 0.04 (lambda = 25)
  one nat of log-probability is 25 units, and on SeLa-like scores whose mean top probability is
  only 0.28 (300 clusters) the exact log v spans 88 units. Two defences: the result reports
  ``floor_mass``, an upper bound on the share of the plan's mass carried by floor entries
  (computed in the label pass); and the offsets w re-centre the grid: the floor then matters
  only where log v - w spans nearly ``depth``. SeLa quantizes with w = the previous labelling's
  log v (the network changes little between labellings) and, if floor_mass is still large,
  scores the data again with w = the new log v (``otclust.methods.sela``).

Why depth 64 and not 16-20: the range a grid must cover is the spread of log v - w plus ~16
(entries exp(-16) below a row's best carry no visible mass); a shallow grid only buys a finer
step, which matters little (the near-tie band), while a too shallow one loses equipartition.
Measured on 20000 x 300 SeLa-like scores whose exact log v spans 52 units: depth 32 keeps 95.7%
of the dense labels with cluster shares 0.65-1.41 of b and floor mass 0.06, depth 64 99.8% with
shares 0.92-1.07 and floor mass 2e-7. 64 keeps ``u_i * K_ik`` a normal float32 number for any K
up to e^20 (see ``_max_depth``).

The codes are built from an iterable of score chunks (e.g. log-probabilities computed by the
network a batch at a time), each quantized on arrival: the float32 matrix never exists.

Iterations (``sinkhorn_labels``)
--------------------------------
One pass over the codes per iteration, in row blocks (``block_bytes`` of codes, 1 MiB on a CPU,
so that the decoded float32 block is still in L2/L3 for its second use):

    K_b = exp2(-step_i * log2(e) * codes_b)        (decode: convert, multiply by row, exp2)
    u_b = a / (K_b v)                              (row update, over-relaxed, see below)
    colsum += K_b^T u_b                            (float32 within a block, float64 across)

then ``v = b / colsum``. The stopping test is the dense solver's relative column error
``max_k |v_k colsum_k - b_k| / b_k <= tol`` of the plan with exact rows for the current v (computed
in the same pass, one more product on the block in cache when over-relaxed). The labels come
from one more pass, ``argmax_k (-step_i * code_ik + log v_k)`` (no exp), for the v that met tol.

Over-relaxation (``overrelax=True``): at SeLa's eps = 0.04 plain Sinkhorn is slow even on
unconfident scores: on 20000 x 300 SeLa-like log-probabilities (mean top probability 0.01 to
0.28) it needs 200-1300 iterations to tol = 1e-2, the dense solver's over-relaxed ones 80-100.
At 5-10 s per pass over 1.28 M x 3000 codes on one core that is hours against minutes,
so both half-steps are over-relaxed exactly as in ``otclust.ot.sinkhorn`` (the same adaptive
omega rule, ``_Solver.adapt_omega``, and the same per-coordinate bound that keeps each half-step
a dual ascent step). It costs N floats of state (log u) and one more product per block (~15%).

Decode, measured on the 2-core AMD EPYC (Zen 3) of docs/performance.md, one thread, 512 x 3000
codes: convert + multiply + exp2 0.8 ns/entry; a 256-entry table lookup 1.9 ns (torch's gathers
need int64 indices, a conversion pass of 8 bytes per entry; and per-row steps would need a table
per row), numpy ``take`` 2.8 ns, ``exp`` instead of ``exp2`` 2.1 ns. The products on the decoded block cost 0.16 ns/entry, so the decode
is most of an iteration. (Writing integer codes into a float32's exponent bits decodes in 0.25
ns but makes the grid non-uniform; not used, to keep the bound above simple.)

Ranges, without log-domain steps: v is rescaled to max 1 before each pass (u and v are defined
up to u c, v / c, and log u is shifted with it); every kernel entry is at least exp(-depth), so
K v >= exp(-depth) and u / a <= exp(depth), and the products u_i K_ik stay normal float32 numbers
(or negligible) for depth <= ~87 - ln K (checked). log u is float32, log v float64.

With ``distributed=True`` each process holds the codes of its own rows; the column sums (2K
float64 numbers per iteration), the floor mass and the label counts are all-reduced and the row
mass is 1/N of the global N, so every process gets its rows' labels of the global problem and the
same v, error and iteration count.

The codes' device is the solver's: on CUDA, blocks are 16 MiB of codes (a GPU has no cache to
fit, and kernel launches cost more than memory traffic).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable

import torch

from otclust.ot.sinkhorn import (
    _ERR_FLOOR,
    _RATE_WINDOW,
    as_marginal,
    _check_same_everywhere,
    _flush_denormals,
    iteration_cap,
    several_processes,
    _Solver,
    _warm_log_v,
)

__all__ = ["QuantizedScores", "SinkhornLabels", "quantize_scores", "sinkhorn_labels"]

DEFAULT_DEPTH = 64.0
_N_CODES = 256
_FLOOR_CODE = _N_CODES - 1
# Codes per block: on a CPU the decoded float32 block (4x this) stays in L2/L3 between its
# products (1 MiB measured as fast as 0.5 MiB at K = 3000, with half the per-block overhead); on
# GPUs a block is simply large.
_CPU_BLOCK_BYTES = 1 << 20
_GPU_BLOCK_BYTES = 16 << 20
_LOG2E = 1.0 / math.log(2.0)
# u_i K_ik must stay a normal float32 (>= 2^-126 = exp(-87.3)): exp(-depth) / K at the least.
_MIN_NORMAL_LOG = -87.3


def _max_depth(k: int) -> float:
    return -_MIN_NORMAL_LOG - math.log(max(k, 1)) - 1.0


class QuantizedScores:
    """N x K scores stored as one byte each: codes of ``s / eps + offsets`` below the row maximum.

    ``codes[i, k] = min(255, round((max_j x_ij - x_ik) / row_step[i]))`` with
    ``x = s / eps + offsets`` and ``row_step[i] = min(depth, row span) / 255``; the kernel entry is
    ``exp(-row_step[i] * code)``. See the module docstring for what this changes in the plan. Build
    one with ``quantize_scores`` (an iterable of chunks), or with
    ``QuantizedScores(n_rows, n_cols, eps)`` and ``write(start, chunk)`` for each chunk.

    Attributes:
        codes: N x K uint8 tensor (N x K bytes), on ``device``.
        row_step: N float32 grid steps (units of 1/eps).
        eps: the entropic temperature (the units of the grid are 1/eps).
        depth: how far below its row's maximum the grid reaches, in units of 1/eps; entries below
            count as ``depth`` below. ``step = depth / 255`` is the coarsest grid step.
        offsets: K float64 column offsets w (default zeros), in the units of log v.
    """

    def __init__(self, n_rows: int, n_cols: int, eps: float, depth: float = DEFAULT_DEPTH, device=None, offsets=None):
        eps = float(eps)
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"quantize_scores: eps must be positive and finite, got {eps}")
        if n_rows < 0 or n_cols < 1:
            raise ValueError(f"quantize_scores: need n_rows >= 0 and n_cols >= 1, got {n_rows} x {n_cols}")
        depth = float(depth)
        if not (0 < depth <= _max_depth(n_cols)):
            raise ValueError(
                f"quantize_scores: depth must be in (0, {_max_depth(n_cols):.1f}] for K = {n_cols} "
                f"(float32 range), got {depth}"
            )
        self.eps = eps
        self.depth = depth
        self.step = depth / _FLOOR_CODE
        self.codes = torch.empty((n_rows, n_cols), dtype=torch.uint8, device=device)
        device = self.codes.device
        self.row_step = torch.empty(n_rows, dtype=torch.float32, device=device)
        if offsets is None:
            self.offsets = torch.zeros(n_cols, dtype=torch.float64, device=device)
        else:
            self.offsets = torch.as_tensor(offsets).to(device=device, dtype=torch.float64).reshape(-1)
            if self.offsets.numel() != n_cols or not bool(torch.isfinite(self.offsets).all()):
                raise ValueError(f"quantize_scores: offsets must be {n_cols} finite numbers")
        self._offsets32 = None if offsets is None else self.offsets.to(torch.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.row_step.numel() * self.row_step.element_size()

    @torch.no_grad()
    def write(self, start: int, scores: torch.Tensor) -> None:
        """Quantize a chunk of rows (any float dtype or device) into rows start .. start + len."""
        k = self.codes.shape[1]
        if scores.dim() != 2 or scores.shape[1] != k:
            raise ValueError(f"quantize_scores: chunk of shape {tuple(scores.shape)}, expected rows x {k}")
        stop = start + scores.shape[0]
        if start < 0 or stop > self.codes.shape[0]:
            raise ValueError(f"quantize_scores: rows {start}..{stop} outside the {self.codes.shape[0]} allocated")
        if scores.shape[0] == 0:
            return
        x = scores.detach().to(device=self.codes.device, dtype=torch.float32)
        if self._offsets32 is None:
            unit = self.eps  # x in units of scores: one multiplication fewer, exact for on-grid scores
        else:
            x = torch.add(self._offsets32, x, alpha=1.0 / self.eps)
            unit = 1.0
        low, top = torch.aminmax(x, dim=1, keepdim=True)
        if not bool(torch.isfinite(top).all()):
            raise ValueError("quantize_scores: a row of scores is all -inf, or contains NaN/+inf")
        if bool(torch.isnan(low).any()):
            raise ValueError("quantize_scores: scores contain NaN")
        # the row's step: its span / 255, at most depth / 255 (-inf scores: span inf, clamped)
        row_step = torch.sub(top, low).div_(unit * _FLOOR_CODE).clamp_(min=1e-30, max=self.step)
        self.row_step[start:stop] = row_step.view(-1)
        # (top - x) / (unit step_i) >= 0; -inf scores give +inf, clamped to the floor code
        y = torch.sub(top, x).div_(row_step.mul_(unit))
        self.codes[start:stop] = y.round_().clamp_(max=_FLOOR_CODE).to(torch.uint8)

    def kernel(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Decoded float32 kernel rows exp(-row_step * code) (for tests and small problems)."""
        stop = self.codes.shape[0] if stop is None else stop
        return self._decode(start, stop, torch.empty((stop - start, self.codes.shape[1]), device=self.codes.device))

    def rounded_scores(self, dtype=torch.float64) -> torch.Tensor:
        """N x K scores with exactly this quantization's plan (up to per-row constants)."""
        return (self.codes.to(dtype) * -self.row_step.to(dtype)[:, None] - self.offsets.to(dtype)) * self.eps

    def _decode(self, start: int, stop: int, out: torch.Tensor) -> torch.Tensor:
        # copy (uint8 -> float32) + mul + exp2: three light passes. torch.mul(uint8, float,
        # out=f32) in one call is slower (type promotion path), a table lookup slower still.
        out.copy_(self.codes[start:stop])
        return out.mul_(self.row_step[start:stop, None] * -_LOG2E).exp2_()


def quantize_scores(
    chunks: Iterable[torch.Tensor],
    eps: float,
    n_rows: int | None = None,
    depth: float = DEFAULT_DEPTH,
    device=None,
    offsets=None,
) -> QuantizedScores:
    """Quantize score chunks (rows in order, e.g. log-probabilities a batch at a time).

    ``n_rows`` (the total) lets the codes be allocated once; without it each chunk's codes are
    kept and concatenated at the end (twice the N x K bytes at that moment). ``device`` defaults
    to the first chunk's; ``offsets`` are the column offsets w (module docstring).
    """
    q = None
    parts = []
    start = 0
    for chunk in chunks:
        if q is None:
            q = QuantizedScores(n_rows if n_rows is not None else 0, chunk.shape[1], eps, depth, device or chunk.device, offsets)
        if n_rows is not None:
            q.write(start, chunk)
        else:
            part = QuantizedScores(chunk.shape[0], chunk.shape[1], eps, depth, q.codes.device, q.offsets)
            part.write(0, chunk)
            parts.append(part)
        start += chunk.shape[0]
    if q is None:
        raise ValueError("quantize_scores: no chunks")
    if n_rows is None:
        q.codes = torch.cat([part.codes for part in parts])
        q.row_step = torch.cat([part.row_step for part in parts])
    elif start != n_rows:
        raise ValueError(f"quantize_scores: got {start} rows, n_rows says {n_rows}")
    return q


@dataclass
class SinkhornLabels:
    """What ``sinkhorn_labels`` returns (this process's rows when distributed).

    ``log_v`` (float64, K) are the log column scalings of the plan ``diag(u) exp(s'/eps) diag(e^log_v)``
    of the rounded scores s' (offsets already taken out), defined up to a constant (returned with
    max 0): they are interchangeable with ``SinkhornResult.log_v`` of the dense solver as warm
    starts, and are what to pass as the next quantization's ``offsets``.
    """

    labels: torch.Tensor  # N (this process's rows) int64: argmax_k of the plan
    log_v: torch.Tensor  # K float64; warm_start / offsets for the next solve
    n_iters: int  # column updates done (passes over the codes: n_iters + 1, plus one for labels)
    error: float  # max_k |plan^T 1 - b|_k / b_k of the plan whose argmax the labels are
    label_mass: torch.Tensor  # K float64: fraction of all (global) rows with each label
    floor_mass: float  # upper bound on the plan's mass carried by entries on the grid's floor
    omega: float = 1.0  # over-relaxation factor at the end (1 = plain Sinkhorn)


class _Relaxation:
    """Over-relaxation state; omega follows ``otclust.ot.sinkhorn``'s rule (the same method)."""

    adapt_omega = _Solver.adapt_omega  # uses history, overrelax, omega, omega_since, err_floor

    def __init__(self, overrelax: bool):
        self.overrelax = overrelax
        self.omega = 1.0
        self.omega_since = 0
        self.err_floor = _ERR_FLOOR[torch.float32]
        self.history: deque = deque(maxlen=8 * _RATE_WINDOW)

    def step(self, t: torch.Tensor) -> torch.Tensor:
        """w * t for log-ratios t (in place): plain (w = 1) or over-relaxed with the per-coordinate
        bound ``w <= 1 + 1 / (1 + max(t, 0) / 2)`` of ``_Solver.relaxed_update`` (dual ascent)."""
        if self.omega == 1.0:
            return t
        w = t.clamp_min(0.0).mul_(0.5).add_(1.0).reciprocal_().add_(1.0).clamp_(max=self.omega)
        return t.mul_(w)


def _allreduce(t: torch.Tensor, distributed: bool, op: str = "sum") -> torch.Tensor:
    if distributed:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def sinkhorn_labels(
    scores: QuantizedScores,
    b: torch.Tensor | None = None,
    n_iters: int | None = None,
    tol: float | None = None,
    warm_start=None,
    distributed: bool = False,
    overrelax: bool = True,
    block_bytes: int | None = None,
) -> SinkhornLabels:
    """Hard labels argmax_k of the entropic OT plan of quantized scores, one pass per iteration.

    The plan is ``diag(u) exp(s'/eps) diag(v)`` of the rounded scores s' (module docstring), rows
    summing to 1/N (N = all processes' rows when ``distributed``) and columns to ``b``; it is never
    materialised. Memory beyond the codes: one decoded block (4 x ``block_bytes``) and O(N + K).

    Args:
        scores: the ``QuantizedScores`` (its eps is the temperature).
        b: K cluster prior (> 0, sums to 1 within 1e-4); defaults to uniform.
        n_iters: maximum column updates (default 1000 with ``tol``, else 100).
        tol: stop once ``max_k |v_k colsum_k - b_k| / b_k <= tol`` for the plan with exact rows
            (relative, as ``otclust.ot.sinkhorn``). Reachable down to ~1e-5 (float32 products
            within a block, float64 across). None runs exactly ``n_iters`` updates.
        warm_start: a previous ``SinkhornLabels`` / ``SinkhornResult`` or a log_v tensor (K).
            Without one the solve starts from log v = offsets (the grid's centring).
        distributed: this process holds some rows of a global problem (torch.distributed
            initialized): column sums, floor mass and label counts are all-reduced.
        overrelax: over-relaxed iterations once plain ones prove slow (as ``otclust.ot.sinkhorn``);
            the fixed point is the same.
        block_bytes: codes per block (default 1 MiB on CPU, 16 MiB on GPU); the result does not
            depend on it beyond float rounding.

    Returns:
        SinkhornLabels(labels, log_v, n_iters, error, label_mass, floor_mass, omega).
    """
    if not isinstance(scores, QuantizedScores):
        raise TypeError("sinkhorn_labels: scores must be QuantizedScores (see quantize_scores)")
    n_iters = iteration_cap(n_iters, tol, "sinkhorn_labels")
    distributed = distributed and several_processes()
    codes = scores.codes
    n, k = codes.shape
    device = codes.device
    b = as_marginal(b, k, "b", codes, torch.float64)
    if abs(float(b.sum()) - 1.0) > 1e-4:
        raise ValueError(f"sinkhorn_labels: b must sum to 1 (the rows' total mass), got {float(b.sum()):.6g}")
    b = b / b.sum()
    warm = _warm_log_v(warm_start, k, device, torch.float64)
    # log v in the frame of the codes (x = s/eps + offsets): v_x = v / e^offsets
    log_v = torch.zeros(k, dtype=torch.float64, device=device) if warm is None else warm - scores.offsets
    n_total = float(_allreduce(torch.tensor([float(n)], dtype=torch.float64, device=device), distributed).item())
    if n_total == 0:
        raise ValueError("sinkhorn_labels: no rows")
    if distributed:
        settings = [scores.eps, scores.step, -1.0 if tol is None else float(tol), float(n_iters), float(overrelax)]
        _check_same_everywhere(
            [torch.tensor([float(k)] + settings, device=device), b, scores.offsets],
            "sinkhorn_labels(distributed=True): processes passed different K, eps, grid, offsets, tol, "
            "n_iters, overrelax or prior b; every process must solve the same problem",
        )
    if block_bytes is None:
        block_bytes = _CPU_BLOCK_BYTES if device.type == "cpu" else _GPU_BLOCK_BYTES
    rows = max(1, min(max(n, 1), int(block_bytes) // k))
    buf = torch.empty((rows, k), dtype=torch.float32, device=device)
    r = torch.empty(rows, dtype=torch.float32, device=device)
    part = torch.empty(k, dtype=torch.float32, device=device)
    sums = torch.empty(2, k, dtype=torch.float64, device=device)  # column sums: relaxed u, exact u
    log_u = torch.zeros(n, dtype=torch.float32, device=device)  # log(u / a) in the current frame
    log_b = torch.log(b)
    relax = _Relaxation(overrelax)

    it = 0
    shift = 0.0
    have_u = False
    with torch.no_grad(), _flush_denormals(device.type == "cpu"):
        while True:
            # v rescaled to max 1; u's frame moves with it (plan = a u K v unchanged)
            top = float(log_v.max())
            log_v = log_v - top
            shift += top
            v = torch.exp(log_v).to(torch.float32)
            relaxed = have_u and relax.omega != 1.0
            sums.zero_()
            for start in range(0, n, rows):
                stop = min(n, start + rows)
                kb = scores._decode(start, stop, buf[: stop - start])
                rb = torch.mv(kb, v, out=r[: stop - start])
                lu = log_u[start:stop]
                if relaxed:
                    exact = rb.log_().neg_()  # log(a / (K v)) - log a
                    if shift:
                        lu.add_(shift)
                    lu.add_(relax.step(exact - lu))
                    sums[0].add_(torch.mv(kb.T, torch.exp(lu), out=part))
                    sums[1].add_(torch.mv(kb.T, exact.exp_(), out=part))
                else:
                    rb.reciprocal_()
                    torch.log(rb, out=lu)
                    sums[0].add_(torch.mv(kb.T, rb, out=part))
            if not relaxed:
                sums[1].copy_(sums[0])
            have_u, shift = True, 0.0
            _allreduce(sums, distributed)
            sums.mul_(1.0 / n_total)
            colsum, colsum_exact = sums[0], sums[1]
            error = float(((torch.exp(log_v) * colsum_exact - b).abs() / b).max())
            if not math.isfinite(error):
                raise ValueError("sinkhorn_labels: non-finite column sums (corrupt codes?)")
            if it >= n_iters or (tol is not None and error <= tol):
                break
            relax.adapt_omega(it, error)
            log_v = log_v + relax.step(log_b - torch.log(colsum) - log_v)
            it += 1
        labels, floor_mass = _label_pass(scores, log_v, buf, r, n_total, distributed)
        counts = _allreduce(torch.bincount(labels, minlength=k).to(torch.float64), distributed)
    log_v = log_v + scores.offsets
    return SinkhornLabels(
        labels=labels,
        log_v=log_v - log_v.max(),
        n_iters=it,
        error=error,
        label_mass=counts / n_total,
        floor_mass=floor_mass,
        omega=relax.omega,
    )


def _label_pass(scores: QuantizedScores, log_v, buf, r, n_total: float, distributed: bool):
    """argmax_k (-row_step_i * code_ik + log v_k) for every row, and the floor-mass bound.

    Row i's share of plan mass on floor entries is ``F_i / Z_i <= F_i / e^(M_i)`` with
    ``F_i = sum over floor entries of e^(-depth + log v_k)`` (one product of the floor mask with v;
    only rows spanning more than depth have floor entries) and ``M_i`` the row's largest
    ``-row_step_i * code + log v`` (found with the argmax); the bound is averaged over rows (each
    carries 1/N of the mass). float32 log-values: candidates closer than ~1e-5 are ties.
    """
    codes = scores.codes
    n, k = codes.shape
    rows = buf.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=codes.device)
    lv = log_v.to(torch.float32)  # max 0
    floor_v = torch.exp(log_v).to(torch.float32)
    floor_total = torch.zeros((), dtype=torch.float64, device=codes.device)
    step_max = torch.tensor(scores.step, dtype=torch.float32).item()  # float32 depth / 255: clipped rows
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        x = buf[: stop - start]
        x.copy_(codes[start:stop])
        step = scores.row_step[start:stop]
        x.mul_(-step[:, None]).add_(lv)
        best, labels[start:stop] = x.max(dim=1)
        clipped = step >= step_max
        if bool(clipped.any()):
            # floor entries: F_i e^-M_i = (mask @ v) e^(-depth - M_i), capped at 1
            x.copy_(codes[start:stop] == _FLOOR_CODE)
            f = torch.mv(x, floor_v, out=r[: stop - start])
            f.mul_(torch.exp(-scores.depth - best)).clamp_(max=1.0).mul_(clipped)
            floor_total += f.sum(dtype=torch.float64)
    floor_mass = float(_allreduce(floor_total.reshape(1), distributed).item()) / n_total
    return labels, floor_mass

"""Sinkhorn speed: otclust.ot.sinkhorn against POT and against the memory floor.

Usage:
    .venv/bin/python benchmarks/sinkhorn.py                      # full run (a few minutes)
    .venv/bin/python benchmarks/sinkhorn.py --quick              # smaller sizes, 1 repeat
    .venv/bin/python benchmarks/sinkhorn.py --sizes 4096x100,16384x1000,65536x1000 --eps 0.05

What is measured, and why:

* Costs are uniform in [0, 1]; ours gets scores = -C in float32, POT gets C in float64 numpy
  (its usual use; POT's numpy backend is where most users meet it).
* ms per iteration is the slope between a short and a long call with a fixed iteration count and
  no early stop (10 and 100 iterations; 100 and 1000 below N*K = 2^20, where 90 iterations are
  too short to time on a shared machine), so one-time setup (building the kernel) cancels out.
  POT's log-domain solvers are too slow for 100 iterations at the large sizes within a few
  minutes; when calls of 2 and 4 iterations predict more than --budget seconds for 100, they use
  2 and 7 iterations instead (the table says so).
* The memory floor is two full reads of the N x K float32 matrix (one Sinkhorn iteration must
  read the kernel once per half-step), timed in this process as a loop of two of the fastest of
  ``K.sum(1)``, ``torch.mv(K, v)`` and ``torch.mv(K.T, u)`` per iteration, with the same
  iteration counts as the solvers.
* Ours, the floor and POT's ot.sinkhorn are timed interleaved, in --repeats rounds, keeping each
  one's fastest time: the machine is shared and its speed drifts 2x within minutes. POT's
  log-domain solvers, 2-300x slower, are timed once.
* "to tol" runs each solver until its marginals are within --tol: ours with tol (relative
  max_j |colsum_j - b_j| / b_j), POT with stopThr = tol * min(b) on its L2 column error, which
  implies the same (POT's test is the stricter one). Times include setup.
* The iterations table runs slow problems (small eps, peaked log-probabilities) to --tol with
  plain and over-relaxed (default) iterations.
* The small-eps rows (eps = --small-eps, default 1e-3) compare time to the same tolerance for
  ours (default over-relaxed, and plain) and POT's sinkhorn_log (POT's stable solver at small
  eps), plus POT's plain sinkhorn: in float64 and on [0, 1] costs with 100 clusters its kernel
  does not underflow at eps = 1e-3 (every row has a cost below 0.7, exp(-700) is a float64), so
  it is a legitimate competitor there; in float32, or with a wider cost range, it is not.

Thread counts: torch and the BLAS under numpy are both limited to --threads (default 1) so that
neither side gets more cores than the other.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import warnings

# Large tensors on transparent huge pages: a fresh 65 MB torch tensor otherwise costs ~55 ms of
# 4 KiB page faults on this VM (numpy, hence POT, already madvises huge pages). Must be set
# before torch allocates; --no-thp turns it off.
if "--no-thp" not in sys.argv:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

import ot  # noqa: E402

from otclust.ot import sinkhorn  # noqa: E402


def best_time(fn, repeats: int, sync=None) -> float:
    """Minimum wall time over repeats (min, not mean: the machine is shared)."""
    best = float("inf")
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best


def slope_ms(run, repeats: int, lo: int = 10, hi: int = 100, budget: float | None = None, sync=None):
    """ms per iteration between calls of lo and hi iterations; (2, 7) when hi would exceed budget.

    The budget test predicts a call of hi iterations from calls of 2 and 4 (setup included, which
    for POT's solvers can be seconds at the large sizes).
    """
    if budget is not None:
        t2 = best_time(lambda: run(2), 1, sync)  # also the warm-up
        t4 = best_time(lambda: run(4), 1, sync)
        if t2 + max(t4 - t2, 0.0) / 2 * (hi - 2) > budget:
            t7 = best_time(lambda: run(7), 1, sync)
            return 1e3 * (t7 - t2) / 5, (2, 7)
    else:
        run(lo)  # warm-up (allocator, page faults)
    t_lo = best_time(lambda: run(lo), repeats, sync)
    t_hi = best_time(lambda: run(hi), repeats, sync)
    return 1e3 * (t_hi - t_lo) / (hi - lo), (lo, hi)


def interleaved_ms(runs: dict, repeats: int, lo: int, hi: int, sync=None) -> dict:
    """ms/iteration (slope lo -> hi) of each entry of `runs`, timed in rounds.

    The machine is shared and its speed drifts by 2x within minutes, so the solvers are timed in
    rounds, one call each per round, and each keeps its fastest time: the ratios then compare
    the solvers under the same conditions rather than whatever load each one happened to meet.
    """
    for run in runs.values():
        run(lo)  # warm-up
    t_lo = {name: float("inf") for name in runs}
    t_hi = dict(t_lo)
    for _ in range(repeats):
        for name, run in runs.items():
            t_lo[name] = min(t_lo[name], best_time(lambda: run(lo), 1, sync))
            t_hi[name] = min(t_hi[name], best_time(lambda: run(hi), 1, sync))
    return {name: 1e3 * (t_hi[name] - t_lo[name]) / (hi - lo) for name in runs}


def floor_runner(kern: torch.Tensor, sync=None):
    """`it` iterations of the memory floor: two full reads of the kernel each.

    The read is the fastest of K.sum(1), torch.mv(K, v) and torch.mv(K.T, u). It is timed like
    the solvers (same iteration counts, same rounds): short timings of single reads would catch
    the quiet moments of a shared machine that second-long solver runs cannot, and flatter it.
    """
    v = torch.rand(kern.shape[1], device=kern.device, dtype=kern.dtype)
    u = torch.rand(kern.shape[0], device=kern.device, dtype=kern.dtype)
    reads = [lambda: kern.sum(1), lambda: torch.mv(kern, v), lambda: torch.mv(kern.T, u)]
    fastest = min(reads, key=lambda f: best_time(f, 5, sync))

    def run(it):
        for _ in range(it):
            fastest()
            fastest()

    return run


def rel_col_error(plan, b) -> float:
    plan = np.asarray(plan, dtype=np.float64)
    return float(np.max(np.abs(plan.sum(0) - b) / b))


def bench_size(n, k, args, device="cpu"):
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else None
    cost = torch.rand(n, k, dtype=torch.float32, device=device)
    scores = -cost
    eps = args.eps
    reps = args.repeats
    row = {"size": f"{n}x{k}", "device": device}

    # small problems: 10x more iterations, or timer noise on a shared machine swamps the slope
    lo, hi = (10, 100) if n * k >= (1 << 20) else (100, 1000)
    row["iters"] = (lo, hi)
    kern = torch.exp((scores - scores.amax(1, keepdim=True)) / eps)
    runs = {"ours": lambda it: sinkhorn(scores, eps, n_iters=it), "floor": floor_runner(kern, sync)}
    with_pot = device == "cpu" and not args.no_pot
    if with_pot:
        m = cost.double().numpy()
        a = np.full(n, 1.0 / n)
        b = np.full(k, 1.0 / k)

        def pot(method):
            return lambda it: method(a, b, m, eps, numItermax=it, stopThr=0.0)

        runs["pot"] = pot(ot.sinkhorn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row.update(interleaved_ms(runs, reps, lo, hi, sync))
    del kern

    # to tolerance, also interleaved, fastest of `reps`
    best_ours = best_pot = None
    for _ in range(reps):
        t0 = time.perf_counter()
        r = sinkhorn(scores, eps, tol=args.tol, n_iters=100000)
        if sync:
            sync()
        dt = time.perf_counter() - t0
        if best_ours is None or dt < best_ours[1]:
            best_ours = (r.n_iters, dt, r.error)
        if with_pot:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                plan, log = ot.sinkhorn(a, b, m, eps, numItermax=100000, stopThr=args.tol * b.min(), log=True)
                dt = time.perf_counter() - t0
            if best_pot is None or dt < best_pot[1]:
                best_pot = (log["niter"] + 1, dt, rel_col_error(plan, b))
    row["ours_tol"] = best_ours
    if not with_pot:
        return row
    row["pot_tol"] = best_pot

    pot_reps = 1  # the log-domain POT solvers are 3-300x slower: one timing suffices to rank them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row["pot_stab"], row["pot_stab_iters"] = slope_ms(
            pot(ot.bregman.sinkhorn_stabilized), pot_reps, lo, hi, budget=args.budget
        )
        if args.skip_log_above and n * k > args.skip_log_above:
            row["pot_log"], row["pot_log_iters"] = None, None
        else:
            row["pot_log"], row["pot_log_iters"] = slope_ms(
                pot(ot.bregman.sinkhorn_log), pot_reps, lo, hi, budget=args.budget
            )
    return row


def bench_small_eps(n, k, args):
    torch.manual_seed(1)
    cost = torch.rand(n, k, dtype=torch.float32)
    eps = args.small_eps
    out = {"size": f"{n}x{k}", "eps": eps}
    for name, over in (("ours", True), ("ours_plain", False)):
        best = None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = sinkhorn(-cost, eps, tol=args.tol, n_iters=200000, overrelax=over)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        out[name] = (r.n_iters, best, r.error, bool(torch.isfinite(r.plan).all()))
    m = cost.double().numpy()
    a = np.full(n, 1.0 / n)
    b = np.full(k, 1.0 / k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        plan, log = ot.bregman.sinkhorn_log(a, b, m, eps, numItermax=200000, stopThr=args.tol * b.min(), log=True)
        dt = time.perf_counter() - t0
    out["pot_log"] = (log["niter"] + 1, dt, rel_col_error(plan, b), bool(np.isfinite(plan).all()))
    # plain scaling survives eps = 1e-3 on [0, 1] costs in float64 (exp(-1/eps) = 5e-435 is still
    # a float64 when every row has some cost below 0.7), so it is a fair competitor here too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        plan, log = ot.sinkhorn(a, b, m, eps, numItermax=200000, stopThr=args.tol * b.min(), log=True)
        dt = time.perf_counter() - t0
    out["pot_plain"] = (log["niter"] + 1, dt, rel_col_error(plan, b), bool(np.isfinite(plan).all()))
    return out


def bench_iterations(args):
    """Iterations to tol, plain vs over-relaxed, on the slow problems over-relaxation is for."""
    cases = []
    gen = torch.Generator().manual_seed(2)
    cases.append(("U[0,1] costs", -torch.rand(512, 10, generator=gen), 1e-3))
    cases.append(("U[0,1] costs", -torch.rand(1000, 100, generator=gen), 1e-3))
    for scale in (1, 3, 10):
        for eps in (1e-2, 1e-3):
            logits = torch.randn(512, 10, generator=gen) * scale
            cases.append((f"log-softmax(N(0, {scale}^2) logits)", torch.log_softmax(logits, dim=1), eps))
    big_logits = torch.randn(4096, 100, generator=gen) * 3
    cases.append(("log-softmax(N(0, 3^2) logits)", torch.log_softmax(big_logits, dim=1), 1e-3))
    rows = []
    for name, scores, eps in cases:
        out = []
        for over in (False, True):
            t0 = time.perf_counter()
            r = sinkhorn(scores, eps, tol=args.tol, n_iters=args.max_iters, overrelax=over)
            out.append((r.n_iters, time.perf_counter() - t0, r.error, r.omega))
        rows.append((name, tuple(scores.shape), eps, out))
    return rows


def fmt(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def ratio(x, y):
    return "n/a" if x is None or y is None else f"{x / y:.2f}x"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="4096x100,16384x1000,65536x1000")
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--small-eps", type=float, default=1e-3)
    p.add_argument("--small-eps-size", default="4096x100")
    p.add_argument("--repeats", type=int, default=4, help="rounds of interleaved timings (fastest kept)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget", type=float, default=60.0, help="seconds one long POT call may take")
    p.add_argument("--skip-log-above", type=int, default=0, help="skip sinkhorn_log above this N*K (0: never)")
    p.add_argument("--no-pot", action="store_true")
    p.add_argument("--no-iterations", action="store_true", help="skip the plain vs over-relaxed table")
    p.add_argument("--max-iters", type=int, default=20000, help="cap of the iterations table")
    p.add_argument("--no-thp", action="store_true", help="leave torch tensors on 4 KiB pages")
    p.add_argument("--quick", action="store_true", help="4096x100,16384x1000, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = "4096x100,16384x1000"
        args.repeats = 1
        args.budget = 10.0

    torch.set_num_threads(args.threads)
    limiter = threadpool_limits(args.threads) if threadpool_limits else None
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]

    print(f"# Sinkhorn benchmark {datetime.date.today()} | {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, threads={args.threads} | torch {torch.__version__}, POT {ot.__version__}")
    print(f"eps={args.eps}, costs U[0,1], float32 (ours) / float64 numpy (POT); tol={args.tol} (relative); "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}\n")

    rows = []
    for n, k in sizes:
        rows.append(bench_size(n, k, args))
        print(f"  done {n}x{k} cpu", flush=True)
    if torch.cuda.is_available():
        for n, k in sizes:
            rows.append(bench_size(n, k, args, device="cuda"))
            print(f"  done {n}x{k} cuda", flush=True)

    print()
    print("| size | device | ours ms/it | floor ms/it | ours/floor | POT sinkhorn ms/it | speed-up | "
          "POT stabilized ms/it | speed-up | POT sinkhorn_log ms/it | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        note_s = "" if r.get("pot_stab_iters") in (None, r["iters"]) else " (2-7 it)"
        note_l = "" if r.get("pot_log_iters") in (None, r["iters"]) else " (2-7 it)"
        print(
            f"| {r['size']} | {r['device']} | {fmt(r['ours'])} | {fmt(r['floor'])} | {ratio(r['ours'], r['floor'])} | "
            f"{fmt(r.get('pot'))} | {ratio(r.get('pot'), r['ours'])} | "
            f"{fmt(r.get('pot_stab'))}{note_s} | {ratio(r.get('pot_stab'), r['ours'])} | "
            f"{fmt(r.get('pot_log'))}{note_l} | {ratio(r.get('pot_log'), r['ours'])} |"
        )
    print()
    print(f"To tol={args.tol} (eps={args.eps}, time includes setup):\n")
    print("| size | device | ours iters | ours s | ours error | POT sinkhorn iters | POT s | POT error | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o = r["ours_tol"]
        q = r.get("pot_tol")
        if q:
            print(f"| {r['size']} | {r['device']} | {o[0]} | {o[1]:.3f} | {o[2]:.1e} | "
                  f"{q[0]} | {q[1]:.3f} | {q[2]:.1e} | {q[1] / o[1]:.2f}x |")
        else:
            print(f"| {r['size']} | {r['device']} | {o[0]} | {o[1]:.3f} | {o[2]:.1e} | - | - | - | - |")

    if not args.no_iterations:
        print()
        print(f"Iterations to tol={args.tol} (float32, cap {args.max_iters}), plain vs over-relaxed (default):\n")
        print("| scores | N x K | eps | plain iters | plain s | over-relaxed iters | s | final omega |")
        print("|---|---|---|---|---|---|---|---|")
        for name, shape, eps, (pl, ov) in bench_iterations(args):
            cap = lambda x: f"{x[0]}" if x[2] <= args.tol else f">{x[0]} (error {x[2]:.0e})"  # noqa: E731
            print(f"| {name} | {shape[0]}x{shape[1]} | {eps:g} | {cap(pl)} | {pl[1]:.2f} | {cap(ov)} | {ov[1]:.2f} | "
                  f"{ov[3]:.2f} |")

    if not args.no_pot:
        n, k = (int(v) for v in args.small_eps_size.lower().split("x"))
        s = bench_small_eps(n, k, args)
        print()
        print(f"Small eps: {s['size']}, eps={s['eps']}, to tol={args.tol} (time includes setup):\n")
        print("| solver | iters | s | error | finite | ours speed-up |")
        print("|---|---|---|---|---|---|")
        o = s["ours"]
        for name, label in (("ours", "ours (over-relaxed, default)"), ("ours_plain", "ours, overrelax=False"),
                            ("pot_log", "POT sinkhorn_log (float64)"), ("pot_plain", "POT sinkhorn (float64)")):
            x = s[name]
            print(f"| {label} | {x[0]} | {x[1]:.3f} | {x[2]:.1e} | {x[3]} | {x[1] / o[1]:.1f}x |")
    del limiter


if __name__ == "__main__":
    main()

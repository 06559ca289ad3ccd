"""Many small OT problems, as CLOT solves every training step: one by one against all at once.

    python benchmarks/sinkhorn_batched.py
    python benchmarks/sinkhorn_batched.py --problems 10 --n 256 --k 10 --eps 0.2 --tol 1e-2

Each row is a set of B problems of N x K log-probabilities (a batch's views of CLOT's heads),
at a sharpness from "early in training" (logit scale 1) to "late" (8), with a column offset per
problem that makes some clusters unpopular, as a trained head does. The solvers, interleaved
over --repeats rounds (fastest kept, so drift of a shared machine falls on all alike):

- one by one: `otclust.ot.sinkhorn` on each problem (what CLOT ran before 2026-12-05);
- batched: `otclust.ot.sinkhorn_batched` on all of them (what it runs now);
- batched, tested every C: the same, testing its stopping rule every --check-every iterations
  only (CLOT's `sinkhorn_check_every`); the ops columns count the tensor operations each batched
  solve dispatches (on a GPU each is a kernel launch, and each test a wait for the device);
- POT: `ot.sinkhorn` (method "sinkhorn", float64 numpy) on each problem, a peer; its stopping
  test (L2 column error <= tol * min(b), tested every 10 iterations) is stricter than ours, so
  it also runs further (the error column says how far).

The error column is the worst relative column error max_j |Q^T 1 - b|_j / b_j over the problems.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust.ot import sinkhorn, sinkhorn_batched  # noqa: E402


def problems(nb: int, n: int, k: int, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(nb, n, k, generator=g) * scale + torch.randn(nb, 1, k, generator=g) * scale / 2
    return torch.log_softmax(logits, dim=2)


def count_ops(solve) -> int:
    """Tensor operations (outermost aten calls) one call of `solve` dispatches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        solve()
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")))


def worst_error(plans, b: np.ndarray) -> float:
    return max(float(np.max(np.abs(np.asarray(p, dtype=np.float64).sum(axis=0) - b) / b)) for p in plans)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=10, help="problems solved together (CLOT: 2 views x heads)")
    parser.add_argument("--n", type=int, default=256, help="rows: the batch size")
    parser.add_argument("--k", type=int, default=10, help="columns: the clusters")
    parser.add_argument("--eps", type=float, default=0.2, help="CLOT's sinkhorn_eps")
    parser.add_argument("--tol", type=float, default=1e-2, help="CLOT's sinkhorn_tol")
    parser.add_argument("--cap", type=int, default=200, help="CLOT's sinkhorn_iters")
    parser.add_argument("--scales", default="1,3,8", help="logit scales, one row each")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-pot", action="store_true")
    parser.add_argument("--check-every", type=int, default=8, help="the sparse-test solver's check_every")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    b = np.full(args.k, 1.0 / args.k)
    print(f"{args.problems} problems of {args.n}x{args.k}, eps {args.eps}, tol {args.tol}, cap {args.cap}, {args.threads} thread(s), torch {torch.__version__}")
    print()
    every = args.check_every
    print(f"| logit scale | one by one ms | mean iters | batched ms | mean iters | ops | speed-up | batched, tested every {every}: ms | mean iters | ops | POT ms | POT mean iters | worst error: one by one / batched / every {every} / POT |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row, scale in enumerate(float(s) for s in args.scales.split(",")):
        scores = problems(args.problems, args.n, args.k, scale, seed=row)
        scores64 = scores.double().numpy()
        outputs = {}

        def one_by_one():
            results = [sinkhorn(s, eps=args.eps, n_iters=args.cap, tol=args.tol) for s in scores]
            outputs["one"] = ([r.plan.numpy() for r in results], np.mean([r.n_iters for r in results]))

        def batched():
            result = sinkhorn_batched(scores, args.eps, n_iters=args.cap, tol=args.tol)
            outputs["batched"] = (list(result.plan.numpy()), float(result.n_iters.double().mean()))

        def sparse():
            result = sinkhorn_batched(scores, args.eps, n_iters=args.cap, tol=args.tol, check_every=every)
            outputs["sparse"] = (list(result.plan.numpy()), float(result.n_iters.double().mean()))

        def pot():
            import ot

            plans, iters = [], []
            for s in scores64:
                plan, log = ot.sinkhorn(np.full(args.n, 1.0 / args.n), b, -s, reg=args.eps, numItermax=args.cap * 10, stopThr=args.tol * b.min(), log=True)
                plans.append(plan)
                iters.append(log["niter"])
            outputs["pot"] = (plans, np.mean(iters))

        solvers = {"one": one_by_one, "batched": batched, "sparse": sparse}
        ops = {name: count_ops(solvers[name]) for name in ("batched", "sparse")}
        if not args.no_pot:
            solvers["pot"] = pot
        best = {name: float("inf") for name in solvers}
        for _ in range(args.repeats):
            for name, solve in solvers.items():
                started = time.perf_counter()
                solve()
                best[name] = min(best[name], time.perf_counter() - started)
        ms = {name: 1e3 * t for name, t in best.items()}
        errors = " / ".join(f"{worst_error(outputs[name][0], b):.1e}" for name in solvers)
        pot_cells = f"{ms['pot']:.2f} | {outputs['pot'][1]:.0f}" if "pot" in ms else "- | -"
        print(
            f"| {scale:g} | {ms['one']:.2f} | {outputs['one'][1]:.1f} | {ms['batched']:.2f} | {outputs['batched'][1]:.1f} | {ops['batched']} "
            f"| {ms['one'] / ms['batched']:.1f}x | {ms['sparse']:.2f} | {outputs['sparse'][1]:.1f} | {ops['sparse']} | {pot_cells} | {errors} |"
        )


if __name__ == "__main__":
    main()

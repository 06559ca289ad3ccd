"""The batched solver (many small problems at once) against POT, the single solver, and its corners."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ot
from otclust.ot import sinkhorn, sinkhorn_batched

torch.set_num_threads(1)


def _problems(nb, n, k, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    # A shared column offset per problem makes some clusters unpopular, as late in training.
    logits = torch.randn(nb, n, k, generator=g) * scale + torch.randn(nb, 1, k, generator=g) * scale / 2
    return torch.log_softmax(logits, dim=2)


def _col_error(plan, b):
    return ((plan.double().sum(dim=-2) - b) / b).abs().amax(dim=-1)


@pytest.mark.parametrize("eps", [0.5, 0.2, 0.05])
def test_each_plan_is_pots_plan(eps):
    scores = _problems(4, 60, 5, 3.0).double()
    b = torch.softmax(torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=1)
    result = sinkhorn_batched(scores, eps, b=b, tol=1e-10, n_iters=20000)
    for i in range(4):
        reference = ot.sinkhorn(np.full(60, 1 / 60), b[i].numpy(), -scores[i].numpy(), reg=eps, method="sinkhorn_log", numItermax=100000, stopThr=1e-13)
        np.testing.assert_allclose(result.plan[i].numpy(), reference, atol=1e-9, rtol=1e-6)


def test_every_problem_stops_on_its_own_at_the_tolerance():
    # Problems of very different difficulty: the easy ones stop first and stay as they were.
    scores = torch.cat([_problems(3, 256, 10, 1.0), _problems(3, 256, 10, 8.0, seed=1)])
    b = torch.full((10,), 0.1)
    result = sinkhorn_batched(scores, 0.2, b=b, tol=1e-2, n_iters=500)
    assert result.plan.dtype == torch.float32 and result.plan.shape == (6, 256, 10)
    errors = _col_error(result.plan, b.double())
    assert bool((errors <= 1e-2 + 1e-6).all())
    torch.testing.assert_close(errors, result.error, atol=1e-6, rtol=1e-3)
    torch.testing.assert_close(result.plan.double().sum(dim=2), torch.full((6, 256), 1 / 256, dtype=torch.float64), atol=1e-9, rtol=1e-6)
    assert result.n_iters[:3].max() < result.n_iters[3:].min()
    # A problem solved alone in the batch gives the same plan: nothing leaks between problems.
    alone = sinkhorn_batched(scores[:1], 0.2, b=b, tol=1e-2, n_iters=500)
    torch.testing.assert_close(alone.plan[0], result.plan[0])
    assert int(alone.n_iters[0]) == int(result.n_iters[0])


@pytest.mark.parametrize("check_every", [2, 5, 16])
def test_checking_every_few_iterations_still_meets_the_tolerance_a_few_iterations_later(check_every):
    """check_every only skips stopping tests: each problem stops at the first tested iteration
    whose error is within tol, at most check_every - 1 iterations after it would have, and its
    plan is then the solver's plan at that iteration (so nearer the POT plan, never farther than tol)."""
    scores = torch.cat([_problems(3, 256, 10, 1.0), _problems(3, 256, 10, 8.0, seed=1)])
    b = torch.full((10,), 0.1)
    every = sinkhorn_batched(scores, 0.2, b=b, tol=1e-2, n_iters=500)
    sparse = sinkhorn_batched(scores, 0.2, b=b, tol=1e-2, n_iters=500, check_every=check_every)
    errors = _col_error(sparse.plan, b.double())
    assert bool((errors <= 1e-2 + 1e-6).all())
    torch.testing.assert_close(errors, sparse.error, atol=1e-6, rtol=1e-3)
    torch.testing.assert_close(sparse.plan.double().sum(dim=2), torch.full((6, 256), 1 / 256, dtype=torch.float64), atol=1e-9, rtol=1e-6)
    late = sparse.n_iters - every.n_iters
    assert bool((late >= 0).all()) and bool((late < check_every).all())
    # where both stopped at the same iteration, the iterates were the same all along
    same = late == 0
    torch.testing.assert_close(sparse.plan[same], every.plan[same])
    # with tol None, the cap ends every problem at exactly n_iters, tested or not
    fixed = sinkhorn_batched(scores, 0.2, b=b, n_iters=23, check_every=check_every)
    torch.testing.assert_close(fixed.plan, sinkhorn_batched(scores, 0.2, b=b, n_iters=23).plan)
    assert fixed.n_iters.tolist() == [23] * 6


def test_checking_every_few_iterations_dispatches_fewer_operations():
    """What the option is for: each skipped test saves its operations (and, on a GPU, a wait)."""

    def ops(**kwargs):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            result = sinkhorn_batched(_problems(4, 256, 10, 4.0), 0.2, tol=1e-4, n_iters=500, **kwargs)
        top = [e for e in prof.events() if e.name.startswith("aten::") and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
        return len(top) / int(result.n_iters.max())

    assert ops(check_every=8) < 0.75 * ops(check_every=1)


def test_checking_every_few_iterations_converges_to_pots_plan():
    scores = _problems(3, 60, 5, 3.0).double()
    result = sinkhorn_batched(scores, 0.2, tol=1e-10, n_iters=20000, check_every=7)
    for i in range(3):
        reference = ot.sinkhorn(np.full(60, 1 / 60), np.full(5, 0.2), -scores[i].numpy(), reg=0.2, method="sinkhorn_log", numItermax=100000, stopThr=1e-13)
        np.testing.assert_allclose(result.plan[i].numpy(), reference, atol=1e-9, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    nb=st.integers(1, 5),
    n=st.integers(2, 80),
    k=st.integers(2, 12),
    scale=st.floats(0.1, 10.0),
    eps=st.floats(0.05, 2.0),
    seed=st.integers(0, 1000),
)
def test_same_fixed_point_as_the_single_solver(nb, n, k, scale, eps, seed):
    scores = _problems(nb, n, k, scale, seed).double()
    b = torch.softmax(torch.randn(nb, k, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64), dim=1)
    result = sinkhorn_batched(scores, eps, b=b, tol=1e-9, n_iters=20000)
    for i in range(nb):
        single = sinkhorn(scores[i], eps, b=b[i], tol=1e-9, n_iters=20000)
        # L1 distance between two plans of total mass 1, each within 1e-9 of its marginals
        assert float((result.plan[i] - single.plan).abs().sum()) < 1e-6
    assert bool((result.error <= 1e-9).all())


def test_without_overrelaxation_it_is_plain_sinkhorn():
    scores = _problems(2, 50, 4, 2.0).double()
    relaxed = sinkhorn_batched(scores, 0.1, tol=1e-8, n_iters=5000)
    plain = sinkhorn_batched(scores, 0.1, tol=1e-8, n_iters=5000, overrelax=False)
    assert float((relaxed.plan - plain.plan).abs().sum()) < 1e-6
    assert bool((relaxed.n_iters < plain.n_iters).all())
    # a fixed number of plain iterations is what the textbook loop gives
    fixed = sinkhorn_batched(scores, 0.1, n_iters=7, overrelax=False)
    kern = torch.exp(scores / 0.1)
    v = torch.ones(2, 4, dtype=torch.float64)
    u = (1 / 50) / torch.einsum("bnk,bk->bn", kern, v)
    for _ in range(7):
        v = 0.25 / torch.einsum("bnk,bn->bk", kern, u)
        u = (1 / 50) / torch.einsum("bnk,bk->bn", kern, v)
    torch.testing.assert_close(fixed.plan, u[:, :, None] * kern * v[:, None, :])
    assert fixed.n_iters.tolist() == [7, 7]


def test_scalings_out_of_float64_range_fall_back_to_the_log_domain_solver():
    # One cluster sits 2,000 eps below every sample's best: its scaling would need e^2000.
    scores = _problems(3, 40, 4, 1.0).double()
    scores[1, :, 0] -= 20.0
    result = sinkhorn_batched(scores, 0.01, tol=1e-6, n_iters=20000)
    assert bool(torch.isfinite(result.plan).all())
    single = sinkhorn(scores[1], 0.01, tol=1e-6, n_iters=20000)
    assert float((result.plan[1] - single.plan).abs().sum()) < 1e-5
    assert float(result.error[1]) <= 1e-6


def test_devices_without_float64_solve_one_by_one_with_the_same_contract():
    # MPS has no float64: there the problems go to sinkhorn one at a time (_one_by_one).
    from otclust.ot.batched import _one_by_one

    scores = _problems(3, 30, 4, 3.0)
    b = torch.tensor([0.4, 0.3, 0.2, 0.1])
    result = _one_by_one(scores, 0.2, b, 500, 1e-4, False, True)
    for i in range(3):
        single = sinkhorn(scores[i], 0.2, b=b, n_iters=500, tol=1e-4)
        torch.testing.assert_close(result.plan[i], single.plan)
        assert int(result.n_iters[i]) == single.n_iters
    assert bool((_col_error(result.plan, b.double()) <= 1e-4 + 1e-6).all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scores": torch.zeros(4, 3)}, "B x N x K"),
        ({"eps": 0.0}, "eps"),
        ({"b": torch.full((2,), 0.5)}, "shape"),
        ({"b": torch.tensor([0.5, 0.5, 0.5])}, "sum to 1"),
        ({"b": torch.tensor([1.0, 0.0, 0.0])}, "positive"),
        ({"tol": -1.0}, "tol"),
        ({"check_every": 0}, "check_every"),
        ({"check_every": 2.5}, "check_every"),
    ],
)
def test_rejects_bad_input(kwargs, match):
    args = {"scores": torch.zeros(2, 5, 3), "eps": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        sinkhorn_batched(**args)


def _distributed_worker(rank, world, init_file, scores, b, queue):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    rows = scores.shape[1] // world
    result = sinkhorn_batched(scores[:, rank * rows : (rank + 1) * rows], 0.2, b=b, tol=1e-6, n_iters=2000, distributed=True)
    # numpy, not a tensor: torch's queue would share the tensor's memory with a process that exits
    queue.put((rank, result.plan.numpy(), result.n_iters.numpy(), result.error.numpy()))
    dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_distributed_rows_of_the_global_plans(tmp_path):
    import torch.multiprocessing as mp

    scores = _problems(3, 128, 6, 4.0)
    scores[2, :, 1] -= 200.0  # one problem for the log-domain fallback, taken on both processes
    b = torch.tensor([0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    whole = sinkhorn_batched(scores, 0.2, b=b, tol=1e-6, n_iters=2000)
    ctx = mp.get_context("fork")  # spawn would re-import torch: 10+ s on a busy 2-core machine
    queue = ctx.Queue()
    procs = [ctx.Process(target=_distributed_worker, args=(r, 2, str(tmp_path / "init"), scores, b, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = {}
    for _ in procs:
        rank, plan, n_iters, error = queue.get(timeout=120)
        got[rank] = (plan, n_iters, error)
    for p in procs:
        p.join(timeout=60)
    np.testing.assert_array_equal(got[0][1], got[1][1])  # the same decisions on both processes
    np.testing.assert_array_equal(got[0][2], got[1][2])
    assert (got[0][2] <= 1e-6).all()
    plan = torch.from_numpy(np.concatenate([got[0][0], got[1][0]], axis=1))
    assert float((plan.double() - whole.plan.double()).abs().sum(dim=(1, 2)).max()) < 1e-4  # L1, total mass 1 each


def test_the_benchmark_prints_its_table(capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import sinkhorn_batched as bench

    bench.main(["--problems", "3", "--n", "40", "--k", "4", "--scales", "1,8", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |") or line.startswith("| 8 |")]
    assert len(rows) == 2
    for row in rows:
        errors = [float(e) for e in row.rstrip(" |").split("|")[-1].split("/")]
        assert len(errors) == 4 and max(errors[:3]) <= 1e-2  # one by one, batched, batched with sparse tests; POT's own test

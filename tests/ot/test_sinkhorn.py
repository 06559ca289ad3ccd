"""Sinkhorn against exact OT (linprog), POT, and the numerical corners it exists for."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

import ot
from otclust.ot import SinkhornResult, sinkhorn

torch.set_num_threads(1)


def _lp_plan(cost, a, b):
    """Exact OT plan by linear programming: min <P, C> s.t. P 1 = a, P^T 1 = b, P >= 0."""
    n, k = cost.shape
    a_eq = np.zeros((n + k, n * k))
    for i in range(n):
        a_eq[i, i * k : (i + 1) * k] = 1.0
    for j in range(k):
        a_eq[n + j, j::k] = 1.0
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=np.concatenate([a, b]), bounds=(0, None), method="highs")
    assert res.status == 0
    return res.x.reshape(n, k), res.fun


def _rel_col_error(plan, b):
    plan = plan.double()
    b = torch.as_tensor(b, dtype=torch.float64)
    return float(((plan.sum(0) - b).abs() / b).max())


@pytest.mark.parametrize("b", [None, [0.5, 0.3, 0.2]])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_small_eps_approaches_exact_ot(b, dtype):
    rng = np.random.default_rng(0)
    cost = rng.random((6, 3))
    a_np = np.full(6, 1 / 6)
    b_np = np.full(3, 1 / 3) if b is None else np.array(b)
    lp_plan, lp_value = _lp_plan(cost, a_np, b_np)
    eps = 1e-3
    res = sinkhorn(-torch.tensor(cost, dtype=dtype), eps, b=None if b is None else torch.tensor(b), tol=1e-6)
    plan = res.plan.double().numpy()
    assert res.plan.dtype == dtype
    value = float((plan * cost).sum())
    # entropic OT overshoots the LP value by at most eps * log(N K) (entropy of a plan)
    assert lp_value - 1e-6 <= value <= lp_value + eps * math.log(18) + 1e-6
    # the LP optimum is unique for generic costs: the entropic plan converges to it
    assert np.abs(plan - lp_plan).max() < 1e-3


def _random_marginal(rng, n):
    x = rng.random(n) + 0.2
    return x / x.sum()


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_matches_pot_with_nonuniform_marginals(eps):
    rng = np.random.default_rng(1)
    n, k = 50, 7
    cost = rng.random((n, k))
    a, b = _random_marginal(rng, n), _random_marginal(rng, k)
    ref = ot.sinkhorn(a, b, cost, eps, stopThr=1e-13, numItermax=100000)
    ours64 = sinkhorn(-torch.tensor(cost), eps, a=torch.tensor(a), b=torch.tensor(b), tol=1e-12, n_iters=10000)
    assert np.abs(ours64.plan.numpy() - ref).max() < 1e-9 * ref.max() + 1e-13
    ours32 = sinkhorn(-torch.tensor(cost, dtype=torch.float32), eps, a=torch.tensor(a), b=torch.tensor(b), tol=1e-5)
    assert ours32.plan.dtype == torch.float32
    assert np.abs(ours32.plan.double().numpy() - ref).max() < 2e-4 * ref.max()


def test_matches_pot_log_domain_at_small_eps():
    rng = np.random.default_rng(2)
    n, k = 40, 5
    cost = rng.random((n, k))
    a, b = _random_marginal(rng, n), _random_marginal(rng, k)
    eps = 0.01
    ref = ot.bregman.sinkhorn_log(a, b, cost, eps, stopThr=1e-12, numItermax=100000)
    ours = sinkhorn(-torch.tensor(cost), eps, a=torch.tensor(a), b=torch.tensor(b), tol=1e-11, n_iters=100000)
    assert ours.error <= 1e-11
    assert np.abs(ours.plan.numpy() - ref).max() < 1e-7 * ref.max()


def test_marginals_iteration_count_and_error_report():
    torch.manual_seed(0)
    scores = torch.randn(300, 20)
    b = torch.distributions.Dirichlet(torch.full((20,), 5.0)).sample()
    res = sinkhorn(scores, 0.5, b=b, tol=1e-5, n_iters=1000)
    assert isinstance(res, SinkhornResult)
    assert 0 < res.n_iters < 1000
    assert res.error <= 1e-5
    rows = res.plan.double().sum(1)
    assert torch.allclose(rows, torch.full_like(rows, 1 / 300), rtol=1e-5)
    # the reported error is the column error of the returned plan (to float32 rounding)
    assert abs(_rel_col_error(res.plan, b) - res.error) < 2e-6
    # without tol: exactly n_iters, error still reported
    fixed = sinkhorn(scores, 0.5, b=b, n_iters=3)
    assert fixed.n_iters == 3 and math.isfinite(fixed.error)
    assert fixed.error > res.error
    # the iterate is the plain Sinkhorn iterate: 3 iterations from scratch, done by hand
    s64 = scores.double()
    kern = torch.exp(s64 / 0.5)
    a = torch.full((300,), 1 / 300, dtype=torch.float64)
    v = torch.ones(20, dtype=torch.float64)
    u = a / (kern @ v)
    for _ in range(3):
        v = b.double() / (kern.T @ u)
        u = a / (kern @ v)
    by_hand = u[:, None] * kern * v[None, :]
    assert torch.allclose(fixed.plan.double(), by_hand, rtol=1e-4, atol=1e-9)


def test_float32_eps_1e3_on_unit_costs_is_finite_and_converges():
    torch.manual_seed(0)
    cost = torch.rand(512, 10)
    res = sinkhorn(-cost, 1e-3, tol=1e-4, n_iters=5000)
    assert torch.isfinite(res.plan).all()
    assert res.plan.dtype == torch.float32
    assert res.error <= 1e-4 and res.n_iters < 5000
    assert res.n_log_steps >= 1
    assert torch.allclose(res.plan.double().sum(1), torch.full((512,), 1 / 512, dtype=torch.float64), rtol=1e-5)
    assert _rel_col_error(res.plan, torch.full((10,), 0.1)) <= 1.1e-4
    # and it is the right plan: float64 log-domain reference
    ref = ot.bregman.sinkhorn_log(np.full(512, 1 / 512), np.full(10, 0.1), cost.double().numpy(), 1e-3,
                                  stopThr=1e-6, numItermax=20000)
    assert np.abs(res.plan.double().numpy() - ref).sum() < 2e-3  # L1 distance, total mass 1


def test_lambda_1000_on_log_softmax_is_finite_and_converges():
    torch.manual_seed(0)
    log_p = torch.log_softmax(torch.randn(512, 10) * 10, dim=1)
    assert log_p.min() < math.log(1e-25)  # entries ~1e-30 as produced by a confident network
    res = sinkhorn(log_p, eps=1 / 1000, tol=1e-3, n_iters=20000)
    assert torch.isfinite(res.plan).all() and torch.isfinite(res.log_u).all() and torch.isfinite(res.log_v).all()
    assert res.error <= 1e-3
    assert torch.allclose(res.plan.double().sum(1), torch.full((512,), 1 / 512, dtype=torch.float64), rtol=1e-5)
    # CLOT form: plan = diag(u) P^lambda diag(v) with the returned log scalings
    rebuilt = torch.exp(res.log_u[:, None] + log_p.double() * 1000 + res.log_v[None, :])
    big = res.plan.double() > 1e-8
    assert torch.allclose(rebuilt[big], res.plan.double()[big], rtol=2e-2)


@pytest.mark.parametrize("eps", [0.05, 2e-3])
def test_large_problem_path_matches_torch_path(eps, monkeypatch):
    """Large CPU problems: products through numpy's BLAS with a fused row pass."""
    torch.manual_seed(0)
    scores = -torch.rand(2048, 512)
    b = torch.distributions.Dirichlet(torch.full((512,), 20.0)).sample()
    fast = sinkhorn(scores, eps, b=b, tol=1e-5, n_iters=5000)
    monkeypatch.setenv("OTCLUST_TORCH_BLAS", "1")
    slow = sinkhorn(scores, eps, b=b, tol=1e-5, n_iters=5000)
    assert fast.error <= 1e-5 and slow.error <= 1e-5
    assert abs(fast.n_iters - slow.n_iters) <= max(2, slow.n_iters // 10)
    assert float((fast.plan.double() - slow.plan.double()).abs().sum()) < 1e-4
    assert abs(_rel_col_error(fast.plan, b) - fast.error) < 1e-6
    rows = fast.plan.double().sum(1)
    assert torch.allclose(rows, torch.full_like(rows, 1 / 2048), rtol=2e-6)


def test_minus_inf_scores_are_tolerated():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(64, 5) * 30, dim=1)
    log_p = torch.log(p)
    log_p[0, 1:] = -math.inf  # hard zeros, as log(softmax) can produce
    res = sinkhorn(log_p, eps=0.01, tol=1e-4)
    assert torch.isfinite(res.plan).all() and res.error <= 1e-4


def test_clot_form_plan_is_diag_p_lambda_diag():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(30, 4, dtype=torch.float64), dim=1)
    lam = 5.0
    res = sinkhorn(torch.log(p), eps=1 / lam, tol=1e-12, n_iters=10000)
    q = p**lam
    ratio = res.plan / q  # must be rank one: u_i v_j
    u = ratio[:, :1]
    v = ratio[:1, :] / ratio[0, 0]
    assert torch.allclose(ratio, u * v, rtol=1e-9)


def test_invariant_to_constant_and_per_row_shifts():
    torch.manual_seed(0)
    scores = torch.randn(200, 12)
    base = sinkhorn(scores, 0.1, tol=1e-6)
    shifted = sinkhorn(scores + 37.5, 0.1, tol=1e-6)
    per_row = sinkhorn(scores + torch.randn(200, 1) * 5, 0.1, tol=1e-6)
    for other in (shifted, per_row):
        assert torch.allclose(other.plan, base.plan, rtol=1e-3, atol=1e-8)


def test_warm_start_needs_fewer_iterations():
    torch.manual_seed(0)
    scores = torch.randn(1000, 30)
    nearby = scores + 1e-3 * torch.randn_like(scores)  # e.g. the next step of training
    for eps, overrelax, factor in ((0.05, True, 1.5), (0.01, False, 2.0)):
        first = sinkhorn(scores, eps, tol=1e-4, n_iters=5000, overrelax=overrelax)
        cold = sinkhorn(nearby, eps, tol=1e-4, n_iters=5000, overrelax=overrelax)
        warm = sinkhorn(nearby, eps, tol=1e-4, n_iters=5000, warm_start=first, overrelax=overrelax)
        assert warm.error <= 1e-4
        assert warm.n_iters * factor <= cold.n_iters
        assert float((warm.plan - cold.plan).abs().sum()) < 1e-3  # L1 distance, total mass 1
    # a new batch of samples on the same clusters: log_v alone is accepted
    other_batch = sinkhorn(scores[:500] + 0.01, 0.05, tol=1e-5, warm_start=first.log_v)
    assert other_batch.error <= 1e-5


def test_overrelaxation_same_fixed_point_fewer_iterations():
    torch.manual_seed(0)
    log_p = torch.log_softmax(torch.randn(512, 10) * 3, dim=1)
    plain = sinkhorn(log_p.double(), 0.01, tol=1e-8, n_iters=50000, overrelax=False)
    fast = sinkhorn(log_p.double(), 0.01, tol=1e-8, n_iters=50000)
    assert plain.error <= 1e-8 and fast.error <= 1e-8
    assert fast.omega > 1.0
    assert fast.n_iters * 3 < plain.n_iters
    assert torch.allclose(fast.plan, plain.plan, rtol=0, atol=1e-6 * float(plain.plan.max()))


def test_non_contiguous_scores():
    torch.manual_seed(0)
    scores = torch.randn(40, 300).T  # a transposed view, as from (prototypes @ features.T).T
    res = sinkhorn(scores, 0.1, tol=1e-6)
    ref = sinkhorn(scores.contiguous(), 0.1, tol=1e-6)
    assert res.plan.is_contiguous()
    assert torch.equal(res.plan, ref.plan)


def test_half_precision_input_and_no_grad():
    torch.manual_seed(0)
    scores = torch.randn(64, 8, requires_grad=True)
    res = sinkhorn(scores, 0.1, tol=1e-4)
    assert not res.plan.requires_grad
    res16 = sinkhorn(scores.detach().to(torch.bfloat16), 0.1, tol=1e-4)
    assert res16.plan.dtype == torch.bfloat16 and torch.isfinite(res16.plan.float()).all()


@pytest.mark.parametrize(
    "kwargs",
    [dict(eps=0.0), dict(eps=0.1, b=torch.tensor([0.5, 0.5])), dict(eps=0.1, b=torch.tensor([0.5, 0.3, 0.1])),
     dict(eps=0.1, b=torch.tensor([1.0, 0.0, 0.0])), dict(eps=0.1, warm_start=torch.zeros(5))],
)
def test_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        sinkhorn(torch.randn(10, 3), **kwargs)


def test_nan_scores_raise_instead_of_returning_nan():
    scores = torch.randn(10, 3)
    scores[2, 1] = math.nan
    with pytest.raises(ValueError):
        sinkhorn(scores, 0.1, tol=1e-4)


def _distributed_worker(rank, world, init_file, scores, eps, b, tol, queue):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    rows = scores.shape[0] // world
    part = scores[rank * rows : (rank + 1) * rows]
    res = sinkhorn(part, eps, b=b, tol=tol, n_iters=5000, distributed=True)
    # numpy, not a tensor: torch's queue would share the tensor's memory with a process that exits
    queue.put((rank, res.plan.numpy(), res.n_iters, res.error))
    dist.destroy_process_group()


def _small_peaked_problem():
    scores = torch.log_softmax(torch.randn(400, 6) * 2, dim=1)
    return scores, 0.01, torch.tensor([0.3, 0.2, 0.2, 0.1, 0.1, 0.1]), 1e-6


def _large_problem():  # 2048 x 512 rows per process: numpy products and the fused row pass
    scores = -torch.rand(4096, 512)
    return scores, 0.02, torch.distributions.Dirichlet(torch.full((512,), 20.0)).sample(), 1e-5


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("problem", [_small_peaked_problem, _large_problem])
def test_distributed_rows_of_the_global_plan(tmp_path, problem):
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    scores, eps, b, tol = problem()
    whole = sinkhorn(scores, eps, b=b, tol=tol, n_iters=5000)
    ctx = mp.get_context("fork")  # spawn would re-import torch: 10+ s on a busy 2-core machine
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_distributed_worker, args=(r, 2, str(tmp_path / "init"), scores, eps, b, tol, queue))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    got = dict()
    for _ in procs:
        rank, plan, n_iters, error = queue.get(timeout=120)
        got[rank] = (plan, n_iters, error)
    for p in procs:
        p.join(timeout=60)
    plan = torch.from_numpy(np.concatenate([got[0][0], got[1][0]]))
    assert got[0][1] == got[1][1] and got[0][2] == got[1][2]  # same decisions on both processes
    assert got[0][2] <= tol
    assert float((plan.double() - whole.plan.double()).abs().sum()) < 1e-3  # L1, total mass 1

"""Property tests: for random shapes, temperatures, priors and dtypes, the Sinkhorn solvers return
finite plans that meet the marginals they promise (and POT's plans on small float64 cases)."""

import math

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from otclust.ot import sinkhorn, sinkhorn_semi_relaxed

torch.set_num_threads(1)

# The tolerance asked of the solver per dtype: float32 column sums are accurate to ~5e-7, so 1e-4
# is comfortably reachable; float64 reaches ~1e-12.
TOL = {torch.float32: 1e-4, torch.float64: 1e-9}


@st.composite
def transport_problems(draw, max_n=40, max_k=8, min_eps=0.02):
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(1, max_k))
    seed = draw(st.integers(0, 2**31 - 1))
    eps = draw(st.floats(min_eps, 2.0))
    scale = draw(st.floats(0.1, 5.0))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    # Priors from equal sizes to a 1:50 spread; row masses uniform or random.
    prior_spread = draw(st.floats(0.0, math.log(50)))
    random_rows = draw(st.booleans())
    rng = np.random.default_rng(seed)
    scores = torch.tensor(scale * rng.standard_normal((n, k)), dtype=dtype)
    b = np.exp(prior_spread * rng.random(k))
    b /= b.sum()
    a = rng.random(n) + 0.1 if random_rows else np.ones(n)
    a /= a.sum()
    return scores, eps, torch.tensor(a), torch.tensor(b), dtype


def _column_error(plan, b):
    return float(((plan.double().sum(0) - b.double()).abs() / b.double()).max())


@settings(max_examples=60, deadline=None)
@given(transport_problems())
def test_balanced_plan_is_finite_and_meets_both_marginals(problem):
    scores, eps, a, b, dtype = problem
    tol = TOL[dtype]
    # Random problems of this range need at most ~450 iterations; a cap near that keeps a solver
    # that never converges from running for minutes per example before the test fails.
    result = sinkhorn(scores, eps, a=a, b=b, tol=tol, n_iters=3000)
    plan = result.plan
    assert plan.dtype == dtype and plan.shape == scores.shape
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    # The solver promises: rows exact (up to rounding), columns within tol (relative), and an
    # `error` that is the column error it reports.
    assert result.error <= tol
    row_rounding = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(plan.double().sum(1).numpy(), a.numpy(), rtol=row_rounding)
    # Recomputed here in float64 from the returned plan; float32 rounding of the plan itself
    # adds ~1e-6 relative.
    assert _column_error(plan, b) <= tol + (2e-6 if dtype == torch.float32 else 1e-11)


@settings(max_examples=25, deadline=None)
@given(transport_problems(max_n=15, max_k=5, min_eps=0.2))
def test_balanced_plan_equals_pots_sinkhorn(problem):
    scores, eps, a, b, _ = problem
    scores = scores.double()
    reference = ot.sinkhorn(a.numpy(), b.numpy(), -scores.numpy(), eps, stopThr=1e-14, numItermax=200000)
    ours = sinkhorn(scores, eps, a=a, b=b, tol=1e-11, n_iters=3000).plan.numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-10 * reference.max())


@settings(max_examples=50, deadline=None)
@given(transport_problems(min_eps=0.05), st.floats(0.01, 20.0))
def test_semi_relaxed_plan_is_finite_rows_exact_and_columns_at_the_kl_optimum(problem, tau):
    scores, eps, a, b, dtype = problem
    result = sinkhorn_semi_relaxed(scores, eps, tau, a=a, b=b, tol=1e-10 if dtype == torch.float64 else 1e-5, n_iters=20000)
    plan = result.plan
    assert plan.dtype == dtype and torch.isfinite(plan).all() and (plan >= 0).all()
    # Rows are exact up to rounding. This solver forms the plan as exp(s + log u + log v) with
    # terms as large as |scores| / eps, so in float32 a row sum carries a few ulps of that size,
    # plus the rounding of adding up its K entries.
    exponent_size = float(scores.abs().max()) / eps + 1.0 + scores.shape[1]
    row_rtol = 8 * 2.0**-24 * exponent_size if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(plan.double().sum(1).numpy(), a.numpy(), rtol=row_rtol)
    # First-order condition of max <Q,S> + eps H(Q) - tau KL(Q^T 1 | b) with exact rows: the column
    # sums c and the column scalings v satisfy log(c / b) = -(eps / tau) log v. It pins the
    # columns to the relaxed optimum (neither b, as balanced Sinkhorn, nor the free softmax).
    c = plan.double().sum(0)
    target = b.double() * a.sum().double() / b.sum().double()
    # A column whose optimal mass is below the dtype's smallest normal number (e.g. 1e-48 in
    # float32) is held as 0; there the condition is checked on the mass v implies.
    implied = target * torch.exp(-(eps / tau) * result.log_v.double())
    held = c > torch.finfo(dtype).tiny
    assert (implied[~held] < 2 * torch.finfo(dtype).tiny).all()
    gap = torch.log(c[held] / target[held]) + (eps / tau) * result.log_v.double()[held]
    assert float(gap.abs().max()) <= (1e-7 if dtype == torch.float64 else 2e-3)


@pytest.mark.filterwarnings("ignore:If reg_type = entropy")
@settings(max_examples=20, deadline=None)
@given(transport_problems(max_n=12, max_k=5, min_eps=0.2), st.floats(0.05, 10.0))
def test_semi_relaxed_plan_equals_pots_unbalanced_sinkhorn(problem, tau):
    scores, eps, a, b, _ = problem
    scores = scores.double()
    reference = ot.unbalanced.sinkhorn_unbalanced(
        a.numpy(), b.numpy(), -scores.numpy(), reg=eps, reg_m=(math.inf, tau), reg_type="entropy", numItermax=100000, stopThr=1e-14
    )
    ours = sinkhorn_semi_relaxed(scores, eps, tau, a=a, b=b, tol=1e-13, n_iters=100000).plan.numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-10 * reference.max())

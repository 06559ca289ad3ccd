"""The semi-relaxed solver against POT's unbalanced Sinkhorn and against the balanced solver."""

import math

import numpy as np
import ot
import pytest
import torch

from otclust.ot import sinkhorn, sinkhorn_semi_relaxed


def _scores(n=40, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(2 * torch.randn(n, k, generator=g, dtype=torch.float64), dim=1)


@pytest.mark.parametrize("tau", [0.05, 0.5, 5.0])
def test_plan_equals_pot_semi_relaxed_unbalanced_sinkhorn(tau):
    scores, eps = _scores(), 0.3
    b = torch.tensor([0.3, 0.25, 0.2, 0.1, 0.1, 0.05], dtype=torch.float64)
    a = torch.full((scores.shape[0],), 1.0 / scores.shape[0], dtype=torch.float64)
    ours = sinkhorn_semi_relaxed(scores, eps=eps, tau=tau, b=b, tol=1e-12, n_iters=20000)
    reference = ot.unbalanced.sinkhorn_unbalanced(
        a.numpy(), b.numpy(), -scores.numpy(), reg=eps, reg_m=(math.inf, tau), reg_type="entropy", numItermax=20000, stopThr=1e-13
    )
    np.testing.assert_allclose(ours.plan.numpy(), reference, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours.plan.sum(dim=1).numpy(), a.numpy(), rtol=1e-12)


def test_infinite_tau_is_the_balanced_plan():
    scores, b = _scores(seed=1), torch.tensor([0.1, 0.1, 0.2, 0.2, 0.2, 0.2], dtype=torch.float64)
    relaxed = sinkhorn_semi_relaxed(scores, eps=0.2, tau=math.inf, b=b, tol=1e-13, n_iters=50000)
    balanced = sinkhorn(scores, eps=0.2, b=b, tol=1e-11, n_iters=50000)
    np.testing.assert_allclose(relaxed.plan.numpy(), balanced.plan.numpy(), rtol=1e-7, atol=1e-14)


def test_columns_move_from_the_prior_towards_the_scores_as_tau_shrinks():
    # Scores that favour cluster 0 for 70% of the samples; the prior says equal sizes.
    g = torch.Generator().manual_seed(2)
    n = 200
    favourite = (torch.rand(n, generator=g) >= 0.7).long()  # cluster 0 for ~70% of the samples
    scores = torch.log_softmax(3.0 * torch.nn.functional.one_hot(favourite, 2).double() + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64), dim=1)
    masses = []
    for tau in (math.inf, 1.0, 0.1, 0.01):
        plan = sinkhorn_semi_relaxed(scores, eps=0.5, tau=tau, tol=1e-12, n_iters=20000).plan
        masses.append(float(plan.sum(dim=0)[0]))
    assert masses[0] == pytest.approx(0.5, abs=1e-9)  # balanced: the prior
    assert masses == sorted(masses)  # weaker penalty, closer to what the scores say
    free = float(torch.softmax(scores / 0.5, dim=1).mean(dim=0)[0])
    assert masses[-1] == pytest.approx(free, abs=0.02)


def test_float32_stays_finite_at_small_eps_and_rows_are_exact():
    scores = _scores(256, 10, seed=3).float()
    result = sinkhorn_semi_relaxed(scores, eps=1e-3, tau=0.05, tol=1e-5)
    assert torch.isfinite(result.plan).all()
    torch.testing.assert_close(result.plan.sum(dim=1), torch.full((256,), 1 / 256), rtol=1e-4, atol=0)


@pytest.mark.parametrize("kwargs, message", [(dict(tau=0.0), "tau must be positive"), (dict(tau=1.0, eps=-1), "eps must be positive"), (dict(tau=1.0, tol=0), "tol must be positive")])
def test_bad_arguments_are_clear_errors(kwargs, message):
    arguments = dict(eps=0.1) | kwargs
    with pytest.raises(ValueError, match=message):
        sinkhorn_semi_relaxed(_scores(), **arguments)

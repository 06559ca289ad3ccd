"""The OT k-means loss: values against POT and closed forms, gradients against finite differences."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ot
from otclust.ot import ot_kmeans_loss, soft_kmeans_loss, squared_distances

torch.set_num_threads(1)


def _problem(n=12, k=3, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    mu = torch.randn(k, d, generator=g, dtype=torch.float64)
    return x, mu


def _sq_dist(x, mu):
    return ((x[:, None, :] - mu[None, :, :]) ** 2).sum(-1)


def test_loss_equals_pot_transport_cost_with_weights():
    x, mu = _problem(n=20, k=4)
    w = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    eps = 0.3
    loss, plan = ot_kmeans_loss(x, mu, eps, weights=w, tol=1e-12, n_iters=10000)
    m = _sq_dist(x, mu).numpy()
    a = np.full(20, 1 / 20)
    ref_plan = ot.sinkhorn(a, w.numpy(), m, eps, stopThr=1e-12, numItermax=100000)
    ref_value = ot.sinkhorn2(a, w.numpy(), m, eps, stopThr=1e-12, numItermax=100000)
    assert float(ref_value) == pytest.approx(float((ref_plan * m).sum()), rel=1e-10)  # sinkhorn2 = <G, M>
    assert float(loss) == pytest.approx(float(ref_value), rel=1e-8)
    assert np.abs(plan.numpy() - ref_plan).max() < 1e-9
    assert not plan.requires_grad
    assert torch.allclose(plan.sum(1), torch.full((20,), 1 / 20, dtype=torch.float64))
    assert torch.allclose(plan.sum(0), w, rtol=1e-10)
    # with the entropy term: the full regularized value OT_eps of the paper
    reg, _ = ot_kmeans_loss(x, mu, eps, weights=w, tol=1e-12, n_iters=10000, entropy=True)
    ref_reg = (ref_plan * m).sum() + eps * (ref_plan * (np.log(ref_plan) - 1)).sum()
    assert float(reg) == pytest.approx(float(ref_reg), rel=1e-8)


def _reg_value(x, mu, eps, w=None):
    with torch.no_grad():
        return float(ot_kmeans_loss(x, mu, eps, weights=w, tol=1e-13, n_iters=100000, entropy=True)[0])


@pytest.mark.parametrize("wrt", ["embeddings", "centers"])
def test_gradient_is_that_of_the_regularized_value(wrt):
    """Envelope theorem: autograd through the detached plan = d OT_eps, checked by finite differences."""
    x, mu = _problem(n=10, k=3, d=2, seed=1)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    eps = 0.5
    x.requires_grad_(True)
    mu.requires_grad_(True)
    loss, _ = ot_kmeans_loss(x, mu, eps, weights=w, tol=1e-13, n_iters=100000)
    loss.backward()
    var = x if wrt == "embeddings" else mu
    grad = var.grad.clone()
    h = 1e-5
    fd = torch.zeros_like(grad)
    with torch.no_grad():
        for idx in np.ndindex(*var.shape):
            base = var[idx].item()
            var[idx] = base + h
            up = _reg_value(x.detach(), mu.detach(), eps, w)
            var[idx] = base - h
            down = _reg_value(x.detach(), mu.detach(), eps, w)
            var[idx] = base
            fd[idx] = (up - down) / (2 * h)
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-8), (grad, fd)
    # and it differs from the gradient of the unregularized transport cost <pi(theta), C(theta)>,
    # so the test above can tell the two apart
    with torch.no_grad():
        def transport(z):
            xx, mm = (z, mu.detach()) if wrt == "embeddings" else (x.detach(), z)
            return float(ot_kmeans_loss(xx, mm, eps, weights=w, tol=1e-13, n_iters=100000)[0])

        z = var.detach().clone()
        z[0, 0] += h
        up = transport(z)
        z[0, 0] -= 2 * h
        down = transport(z)
    assert abs((up - down) / (2 * h) - float(grad[0, 0])) > 1e-4


def test_float32_gradient_steps_reduce_the_loss():
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    mu = torch.randn(5, 8, requires_grad=True)
    losses = []
    for _ in range(5):  # plain gradient descent on the centers (torch.optim takes seconds to import)
        loss, plan = ot_kmeans_loss(x, mu, eps=0.1)
        (grad,) = torch.autograd.grad(loss, mu)
        with torch.no_grad():
            mu -= 0.5 * grad
        losses.append(float(loss.detach()))
        assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    assert losses[-1] < losses[0]


def test_large_eps_gives_the_independent_coupling():
    """Proposition 1: eps -> inf makes pi -> (1/n) 1 w^T."""
    x, mu = _problem(n=15, k=3)
    w = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    _, plan = ot_kmeans_loss(x, mu, eps=1e4, weights=w)
    assert torch.allclose(plan, torch.full((15, 1), 1 / 15, dtype=torch.float64) * w, rtol=1e-3)


def test_soft_kmeans_is_the_one_marginal_closed_form():
    x, mu = _problem(n=16, k=4, d=3)
    eps = 0.7
    cost = _sq_dist(x, mu)
    pi = torch.softmax(-cost / eps, dim=1) / 16
    loss, plan = soft_kmeans_loss(x, mu, eps)
    assert torch.allclose(plan, pi, rtol=1e-12)
    assert float(loss) == pytest.approx(float((pi * cost).sum()), rel=1e-12)
    reg, _ = soft_kmeans_loss(x, mu, eps, entropy=True)
    direct = (pi * cost).sum() + eps * (pi * (torch.log(pi) - 1)).sum()
    assert float(reg) == pytest.approx(float(direct), rel=1e-12)
    # the OT loss with its column constraint set to the soft k-means column sums is the same problem
    ot_loss, ot_plan = ot_kmeans_loss(x, mu, eps, weights=pi.sum(0), tol=1e-12, n_iters=10000)
    assert torch.allclose(ot_plan, pi, rtol=1e-8)


def test_soft_kmeans_gradients():
    x, mu = _problem(n=9, k=3, d=2, seed=3)
    eps = 0.4
    x.requires_grad_(True)
    # entropy=True: envelope gradient, i.e. that of sum(pi.detach() * C)
    reg, plan = soft_kmeans_loss(x, mu, eps, entropy=True)
    (g_reg,) = torch.autograd.grad(reg, x)
    (g_env,) = torch.autograd.grad((plan * _sq_dist(x, mu)).sum(), x)
    assert torch.allclose(g_reg, g_env, rtol=1e-10)
    # entropy=False: DKM differentiates through the softmax too
    dkm, _ = soft_kmeans_loss(x, mu, eps)
    (g_dkm,) = torch.autograd.grad(dkm, x)
    pi = torch.softmax(-_sq_dist(x, mu) / eps, dim=1) / 9
    (g_ref,) = torch.autograd.grad((pi * _sq_dist(x, mu)).sum(), x)
    assert torch.allclose(g_dkm, g_ref, rtol=1e-10)
    assert not torch.allclose(g_dkm, g_env, rtol=1e-3)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        ot_kmeans_loss(torch.randn(4, 3), torch.randn(2, 2), 0.1)


def _sixty_points_with_exact_cost(sizes):
    """(points, centres, sizes as a tensor or None, POT's exact transport cost under the sizes)."""
    x, mu = _problem(n=60, k=3)
    w = np.full(3, 1 / 3) if sizes is None else np.array(sizes)
    exact = ot.emd2(np.full(60, 1 / 60), w, _sq_dist(x, mu).numpy())
    return x, mu, None if sizes is None else torch.tensor(sizes), exact


@pytest.mark.parametrize("sizes", [None, [0.5, 0.3, 0.2]])
def test_size_constrained_inertia_approaches_the_exact_transport_cost(sizes):
    from otclust.ot import size_constrained_inertia

    x, mu, weights, exact = _sixty_points_with_exact_cost(sizes)
    value = size_constrained_inertia(x.float(), mu.float(), weights, relative_eps=0.005)
    # the entropic plan is feasible to Sinkhorn's 1e-4 marginal tolerance, so it costs at least
    # about the optimum, and not much more at this small eps
    assert exact * (1 - 1e-3) <= value <= exact * 1.02


@settings(max_examples=30, deadline=None)
@given(n=st.integers(5, 60), k=st.integers(2, 6), seed=st.integers(0, 10_000), skew=st.booleans(), n_iters=st.sampled_from([1, 5, 30]))
def test_the_lower_bound_never_exceeds_the_exact_transport_cost(n, k, seed, skew, n_iters):
    """Weak duality: whatever the iterations, the bound is at most the exact (POT emd) cost."""
    from otclust.ot import size_constrained_lower_bound

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64) * (1 + 3 * torch.rand(n, 1, generator=g, dtype=torch.float64))
    mu = torch.randn(k, 3, generator=g, dtype=torch.float64)
    w = torch.softmax(torch.randn(k, generator=g, dtype=torch.float64) * (2.0 if skew else 0.0), dim=0)
    cost = _sq_dist(x, mu)
    exact = ot.emd2(np.full(n, 1 / n), w.numpy(), cost.numpy())
    bound = size_constrained_lower_bound(x, mu, w, n_iters=n_iters)
    assert bound <= exact + 1e-9 * (1 + exact)


@pytest.mark.parametrize("sizes", [None, [0.5, 0.3, 0.2]])
def test_the_lower_bound_comes_close_to_the_cost_after_a_few_dozen_iterations(sizes):
    from otclust.ot import size_constrained_inertia, size_constrained_lower_bound

    x, mu, weights, exact = _sixty_points_with_exact_cost(sizes)
    plain = float(_sq_dist(x, mu).min(dim=1).values.mean())
    bound = size_constrained_lower_bound(x.float(), mu.float(), weights, n_iters=30)
    assert plain <= bound <= exact * (1 + 1e-9)
    assert bound >= exact - 0.02 * (exact - plain) - 1e-9  # most of the gap to the plain inertia closed
    assert bound <= size_constrained_inertia(x.float(), mu.float(), weights) * (1 + 1e-3)


def _two_tight_blobs_and_a_long_line(n=100, seed=0):
    """A at x=0, B at x=4 (tight), C spread along x in [30, 50]: k-means' lowest inertia merges
    A and B and splits C; with equal cluster sizes that end point is the expensive one."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 2, generator=g) * 0.05
    b = torch.randn(n, 2, generator=g) * 0.05 + torch.tensor([4.0, 0.0])
    c = torch.stack([30 + 20 * torch.rand(n, generator=g), torch.zeros(n)], dim=1)
    return torch.cat([a, b, c]), np.repeat([0, 1, 2], n)


def test_size_constrained_inertia_prefers_the_partition_with_the_prior_sizes():
    from otclust.ot import size_constrained_inertia

    x, _ = _two_tight_blobs_and_a_long_line()
    true_centers = torch.tensor([[0.0, 0.0], [4.0, 0.0], [40.0, 0.0]])
    merge_and_split = torch.tensor([[2.0, 0.0], [35.0, 0.0], [45.0, 0.0]])
    plain = [float(squared_distances(x, c).min(dim=1).values.mean()) for c in (true_centers, merge_and_split)]
    assert plain[1] < plain[0]  # what plain k-means would keep
    assert size_constrained_inertia(x, true_centers) < size_constrained_inertia(x, merge_and_split)


def test_size_constrained_lloyd_ends_where_an_exact_balanced_lloyd_stays():
    """Reference: the exact equal-size assignment (each centre copied N/K times, scipy's
    Hungarian solver). At the centres size_constrained_kmeans returns, it costs what the
    function reports, and one more exact Lloyd step gains next to nothing: a fixed point."""
    from scipy.optimize import linear_sum_assignment

    from otclust.ot import size_constrained_inertia, size_constrained_kmeans

    g = torch.Generator().manual_seed(0)
    points = torch.cat([c + 3.0 * torch.randn(n, 8, generator=g) for c, n in zip(torch.eye(8)[:3] * 10, [30, 20, 10])]).double()
    start = points[[0, 1, 59]].clone()  # two starts in the big blob, one in the small one

    def exact_assignment(centers):
        cost = torch.cdist(points, centers).pow(2).numpy()
        rows, cols = linear_sum_assignment(np.repeat(cost, 20, axis=1))  # 20 = N / K places per centre
        labels = np.empty(len(points), dtype=int)
        labels[rows] = cols // 20
        return labels, float(cost[rows, cols // 20].mean())

    centers, cost = size_constrained_kmeans(points, start, None, iters=30)
    labels, exact = exact_assignment(centers)
    assert cost == pytest.approx(exact, rel=0.02)
    stepped = torch.stack([points[torch.from_numpy(labels == k)].mean(0) for k in range(3)])
    assert exact_assignment(stepped)[1] > 0.98 * exact
    assert cost < 0.8 * size_constrained_inertia(points, start)  # the steps moved the centres

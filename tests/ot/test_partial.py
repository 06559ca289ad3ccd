"""Progressive partial OT against POT's partial solvers, an exact LP, a generic constrained
optimiser on the primal, and the semi-relaxed solver it extends."""

import math

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog, minimize

from otclust.ot import sinkhorn_partial, sinkhorn_semi_relaxed, training_rho


def _scores(n=30, k=5, seed=0, sharpness=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(sharpness * torch.randn(n, k, generator=g, dtype=torch.float64), dim=1)


@pytest.mark.parametrize("rho", [0.2, 0.6, 0.95])
def test_exact_columns_equal_pot_sinkhorn_on_the_problem_with_a_virtual_column(rho):
    # tau = inf: balanced entropic OT from the samples to K + 1 columns of masses rho * b and
    # 1 - rho, the last scored 0. (POT's entropic_partial_wasserstein is another problem: it puts
    # no entropy on the untransported mass; the exact problems agree, see the LP test.)
    scores, eps = _scores(), 0.3
    n, k = scores.shape
    a = np.full(n, 1.0 / n)
    b = np.array([0.35, 0.25, 0.2, 0.15, 0.05])
    ours = sinkhorn_partial(scores, eps=eps, rho=rho, tau=math.inf, b=torch.from_numpy(b), tol=1e-13, n_iters=50000)
    cost = np.concatenate([-scores.numpy(), np.zeros((n, 1))], axis=1)
    reference = ot.sinkhorn(a, np.append(rho * b, 1 - rho), cost, reg=eps, method="sinkhorn_log", numItermax=50000, stopThr=1e-14)
    np.testing.assert_allclose(ours.plan.numpy(), reference[:, :k], rtol=1e-6, atol=1e-13)
    np.testing.assert_allclose(ours.virtual.numpy(), reference[:, k], rtol=1e-6, atol=1e-13)
    np.testing.assert_allclose((ours.plan.sum(dim=1) + ours.virtual).numpy(), a, rtol=1e-12)


def _primal_reference(scores, eps, rho, tau, b):
    """The partial problem of otclust.ot.partial written out and handed to SLSQP (small N, K)."""
    s = scores.numpy()
    n, k = s.shape
    a = np.full(n, 1.0 / n)
    target = rho * b / b.sum()

    def objective(x):
        q = x.reshape(n, k + 1)
        columns = q[:, :k].sum(axis=0)
        entropy = -(q * (np.log(q) - 1)).sum()
        kl = (columns * np.log(columns / target) - columns + target).sum()
        return -(q[:, :k] * s).sum() - eps * entropy + tau * kl

    def gradient(x):
        q = x.reshape(n, k + 1)
        columns = q[:, :k].sum(axis=0)
        g = eps * np.log(q)
        g[:, :k] += -s + tau * np.log(columns / target)[None, :]
        return g.ravel()

    rows = np.kron(np.eye(n), np.ones(k + 1))
    virtual = np.zeros(n * (k + 1))
    virtual[k :: k + 1] = 1.0
    constraints = [
        {"type": "eq", "fun": lambda x: rows @ x - a, "jac": lambda x: rows},
        {"type": "eq", "fun": lambda x: np.array([virtual @ x - (1 - rho)]), "jac": lambda x: virtual[None, :]},
    ]
    start = np.full(n * (k + 1), 1.0 / (n * (k + 1)))
    result = minimize(objective, start, jac=gradient, constraints=constraints, bounds=[(1e-15, 1)] * start.size, method="SLSQP", options={"ftol": 1e-15, "maxiter": 2000})
    assert result.success, result.message
    return result.x.reshape(n, k + 1)


@pytest.mark.parametrize("rho, tau", [(0.3, 0.5), (0.7, 2.0), (0.9, 0.2)])
def test_relaxed_columns_equal_a_generic_solver_on_the_primal(rho, tau):
    scores, eps = _scores(n=8, k=3, seed=1), 0.5
    b = np.array([0.5, 0.3, 0.2])
    ours = sinkhorn_partial(scores, eps=eps, rho=rho, tau=tau, b=torch.from_numpy(b), tol=1e-14, n_iters=50000)
    reference = _primal_reference(scores, eps, rho, tau, b)
    np.testing.assert_allclose(ours.plan.numpy(), reference[:, :3], atol=2e-6)
    np.testing.assert_allclose(ours.virtual.numpy(), reference[:, 3], atol=2e-6)


def test_rho_one_is_the_semi_relaxed_plan():
    scores = _scores(seed=2)
    b = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1], dtype=torch.float64)
    partial = sinkhorn_partial(scores, eps=0.2, rho=1.0, tau=0.7, b=b, tol=1e-13, n_iters=20000)
    relaxed = sinkhorn_semi_relaxed(scores, eps=0.2, tau=0.7, b=b, tol=1e-13, n_iters=20000)
    np.testing.assert_allclose(partial.plan.numpy(), relaxed.plan.numpy(), rtol=1e-9, atol=1e-15)
    assert float(partial.virtual.abs().max()) == 0.0


def test_small_eps_reaches_the_exact_partial_lp_optimum():
    scores, rho = _scores(n=20, k=4, seed=3), 0.5
    n, k = scores.shape
    a, b = np.full(n, 1.0 / n), np.array([0.4, 0.3, 0.2, 0.1])
    # max <Q, S>  s.t.  Q 1 <= a,  Q^T 1 = rho b,  Q >= 0
    rows = np.kron(np.eye(n), np.ones(k))
    columns = np.kron(np.ones(n), np.eye(k))
    lp = linprog(-scores.numpy().ravel(), A_ub=rows, b_ub=a, A_eq=columns, b_eq=rho * b, bounds=(0, None), method="highs")
    assert lp.status == 0
    ours = sinkhorn_partial(scores, eps=1e-2, rho=rho, tau=math.inf, b=torch.from_numpy(b), tol=1e-10, n_iters=3000)
    value = float((ours.plan * scores).sum())
    assert value == pytest.approx(-lp.fun, abs=5e-3 * abs(lp.fun))
    exact = ot.partial.partial_wasserstein(a, rho * b, -scores.numpy(), m=(rho * b).sum())  # POT's exact partial OT agrees with the LP
    assert float((exact * scores.numpy()).sum()) == pytest.approx(-lp.fun, rel=1e-9)


def test_the_virtual_cluster_takes_the_least_confident_samples():
    # Half the samples are sure of their cluster, half are not: at rho = 0.5 the transported mass
    # goes to the sure half.
    g = torch.Generator().manual_seed(4)
    n, k = 200, 4
    sure = torch.arange(n) < n // 2
    logits = torch.where(sure[:, None], 6.0 * torch.nn.functional.one_hot(torch.arange(n) % k, k).double(), 0.1 * torch.randn(n, k, generator=g, dtype=torch.float64))
    result = sinkhorn_partial(torch.log_softmax(logits, dim=1), eps=0.2, rho=0.5, tau=1.0, tol=1e-10, n_iters=20000)
    share = result.plan.sum(dim=1) * n  # the transported part of each sample's mass
    assert float(share[sure].mean()) > 0.9
    assert float(share[~sure].mean()) < 0.1


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 8),
    rho=st.floats(0.05, 1.0),
    tau=st.sampled_from([0.05, 1.0, 10.0, math.inf]),
    eps=st.sampled_from([1e-3, 0.05, 0.5]),
    double=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_properties(n, k, rho, tau, eps, double, seed):
    dtype = torch.float64 if double else torch.float32
    g = torch.Generator().manual_seed(seed)
    scores = torch.log_softmax(3 * torch.randn(n, k, generator=g), dim=1).to(dtype)
    result = sinkhorn_partial(scores, eps=eps, rho=rho, tau=tau, tol=1e-6, n_iters=5000)
    assert result.plan.dtype == dtype and result.plan.shape == (n, k)
    assert torch.isfinite(result.plan).all() and torch.isfinite(result.virtual).all()
    assert (result.plan >= 0).all() and (result.virtual >= 0).all()
    # float32: the plan's exponent s/eps + log u + log v adds terms of size |s|/eps, each rounded
    # to 2^-24 relative, so a row sum is exact to about that times |s|/eps.
    rtol = max(1e-4, 4 * 2.0**-24 * float(scores.abs().max()) / eps) if dtype == torch.float32 else 1e-9
    torch.testing.assert_close((result.plan.sum(dim=1) + result.virtual).double(), torch.full((n,), 1.0 / n, dtype=torch.float64), rtol=rtol, atol=0)
    if result.error <= 1e-6:  # converged: the virtual cluster holds its 1 - rho share
        assert float(result.virtual.double().sum()) == pytest.approx(1 - rho, abs=1e-4)


def test_ramp_goes_from_rho0_to_one():
    values = [training_rho(t / 10, rho0=0.1) for t in range(11)]
    assert values[0] == pytest.approx(0.1 + 0.9 * math.exp(-5))
    assert values[-1] == 1.0
    assert values == sorted(values)
    assert training_rho(None) == 1.0


@pytest.mark.parametrize("kwargs, message", [(dict(rho=0.0), "rho"), (dict(rho=1.5), "rho"), (dict(tau=0.0), "tau must be positive"), (dict(eps=0.0), "eps must be positive")])
def test_bad_arguments_are_clear_errors(kwargs, message):
    arguments = dict(eps=0.1, rho=0.5) | kwargs
    with pytest.raises(ValueError, match=message):
        sinkhorn_partial(_scores(), **arguments)


# --- the 'auto:p2ot' mode: parsing and what a method's solve_transport does with it ------------


def test_parse_p2ot_mode():
    from otclust.ot.priors import parse_cluster_proportions, partial_transport, size_penalty

    assert parse_cluster_proportions("auto:p2ot", 3) == ("auto", None)
    assert partial_transport("auto:p2ot") == 1.0 and partial_transport("auto:p2ot:0.3") == 0.3
    assert partial_transport("auto:p2ot:inf") == math.inf
    assert partial_transport("auto") is None and partial_transport("auto:0.5") is None and partial_transport("uniform") is None
    assert size_penalty("auto:p2ot") is None and size_penalty("auto:p2ot:2") is None  # not the semi-relaxed mode


def test_parse_p2ot_with_equal_sizes_as_in_the_paper():
    from otclust.ot.priors import parse_cluster_proportions, partial_transport, size_penalty

    assert parse_cluster_proportions("p2ot", 3) == ("uniform", None)
    assert parse_cluster_proportions("p2ot:0.5", 3) == ("uniform", None)
    assert partial_transport("p2ot") == 1.0 and partial_transport("p2ot:0.5") == 0.5
    assert size_penalty("p2ot") is None


def test_p2ot_pulls_towards_equal_sizes_and_auto_p2ot_towards_the_estimate():
    from otclust.methods.base import InputSpec
    from otclust.methods.clot import Clot, ClotParams
    from otclust.ot.priors import parse_cluster_proportions, partial_transport

    skewed = torch.tensor([[0.7, 0.2, 0.1]]).repeat(50, 1)  # the model fills cluster 0 most
    targets = {}
    for spec in ("p2ot", "auto:p2ot"):
        method = Clot(3, InputSpec(n_samples=50, feature_dim=2, mean=[0.0] * 2, std=[1.0] * 2), ClotParams(auto_sizes="predictions"))
        method.set_cluster_prior(*parse_cluster_proportions(spec, 3), partial_tau=partial_transport(spec))
        for _ in range(30):
            targets[spec] = method.target_marginal(skewed)
    torch.testing.assert_close(targets["p2ot"], torch.full((3,), 1 / 3))
    assert targets["auto:p2ot"][0] > 0.5  # the estimate follows the predicted masses


@pytest.mark.parametrize("spec", ["auto:p2ot:", "auto:p2ot:-1", "auto:p2ot:x", "auto:p2otx", "p2ot:", "p2ot:0", "p2otx"])
def test_bad_p2ot_specs_are_user_errors(spec):
    from otclust.errors import UserError
    from otclust.ot.priors import parse_cluster_proportions

    with pytest.raises(UserError):
        parse_cluster_proportions(spec, 3)


def test_method_transports_a_growing_share_as_training_progresses():
    from otclust.methods.base import InputSpec
    from otclust.methods.clot import Clot, ClotParams

    spec = InputSpec(n_samples=64, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = Clot(4, spec, ClotParams(sinkhorn_eps=0.2, sinkhorn_iters=1000, sinkhorn_tol=1e-6))
    method.set_cluster_prior("auto", None, partial_tau=1.0)
    logits = 3 * torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    labelled = []
    for progress in (0.0, 0.5, 1.0):
        method.training_progress = progress
        q = method.pseudo_labels(logits)
        assert float(q.max()) <= 1 + 1e-5 and float(q.sum(1).max()) <= 1 + 1e-5  # each sample at most its own mass
        labelled.append(float(q.sum()) / 64)
    assert labelled[0] == pytest.approx(training_rho(0.0), abs=1e-3)
    assert labelled[1] == pytest.approx(training_rho(0.5), abs=1e-3)
    assert labelled[2] == pytest.approx(1.0, abs=1e-5)


def test_semi_relaxed_and_p2ot_modes_cannot_be_combined():
    from otclust.errors import UserError
    from otclust.methods.base import InputSpec
    from otclust.methods.clot import Clot, ClotParams

    method = Clot(2, InputSpec(n_samples=8, feature_dim=2, mean=[0.0] * 2, std=[1.0] * 2), ClotParams())
    with pytest.raises(UserError, match="choose one"):
        method.set_cluster_prior("auto", None, size_penalty=0.1, partial_tau=1.0)


# --- several processes: each holds half the rows of one problem ---------------------------------


def _distributed_worker(rank, port, folder):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        scores = _scores(n=24, k=5, seed=7).float()
        half = scores[:12] if rank == 0 else scores[12:]
        result = sinkhorn_partial(half, eps=0.2, rho=0.4, tau=0.5, tol=1e-7, n_iters=5000, distributed=True)
        torch.save({"plan": result.plan, "virtual": result.virtual}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_with_half_the_rows_each_get_their_rows_of_the_whole_plan(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_distributed_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method=method)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    whole = sinkhorn_partial(_scores(n=24, k=5, seed=7).float(), eps=0.2, rho=0.4, tau=0.5, tol=1e-7, n_iters=5000)
    torch.testing.assert_close(torch.cat([p["plan"] for p in parts]) * 24, whole.plan * 24, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([p["virtual"] for p in parts]) * 24, whole.virtual * 24, atol=1e-5, rtol=0)


def test_the_engine_installs_p2ot_and_reports_training_progress_each_step(blobs):
    """`--cluster-proportions auto:p2ot` reaches the method through the engine: the partial
    solver is installed and the progress it ramps the mass with is set at every step."""
    from otclust.config import FitConfig
    from otclust.engine import Trainer
    from otclust.methods.clot import Clot

    seen = []
    original = Clot.training_step

    def recording_step(self, batch, indices):
        seen.append((self.partial_tau, self.training_progress))
        return original(self, batch, indices)

    config = FitConfig(method="clot", clusters=3, epochs=2, batch_size=40, seed=0, cluster_proportions="auto:p2ot", readout="head")
    import unittest.mock as mock

    with mock.patch.object(Clot, "training_step", recording_step):
        Trainer(config, progress=False, log=lambda m: None).fit(blobs)
    assert all(tau == 1.0 for tau, _ in seen)
    progress = [p for _, p in seen]
    assert progress[0] == 0.0 and progress == sorted(progress) and progress[-1] < 1.0 and progress[-1] > 0.5

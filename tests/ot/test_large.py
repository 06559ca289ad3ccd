"""Chunked Sinkhorn labels on 8-bit quantized scores against the dense solver."""

import math

import numpy as np
import pytest
import torch

from otclust.ot import QuantizedScores, SinkhornResult, quantize_scores, sinkhorn, sinkhorn_labels

torch.set_num_threads(1)

EPS = 0.04


def _on_grid_problem(n=400, k=9, seed=0):
    """Scores exactly on the grid of depth 64 (plus per-row constants), and a non-uniform prior.

    Every row spans the whole depth (one code 0, one code 255), so that its step is depth / 255.
    """
    g = torch.Generator().manual_seed(seed)
    step = 64.0 / 255
    codes = torch.randint(0, 60, (n, k), generator=g)
    ends = torch.rand(n, k, generator=g).argsort(dim=1)[:, :2]
    codes[torch.arange(n), ends[:, 0]] = 0  # each row's maximum
    codes[torch.arange(n), ends[:, 1]] = 255  # and minimum
    scores = -EPS * step * codes.double() + torch.randn(n, 1, generator=g, dtype=torch.float64)
    b = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    return scores, codes.to(torch.uint8), b / b.sum()


def _centred(log_v):
    return log_v - log_v.mean()


def test_on_grid_scores_quantize_exactly_and_give_the_dense_labels_and_potentials():
    scores, codes, b = _on_grid_problem()
    q = quantize_scores(scores.split(128), EPS, n_rows=len(scores))
    assert torch.equal(q.codes, codes)
    dense = sinkhorn(scores, EPS, b=b, tol=1e-10, n_iters=20000)
    expected = dense.plan.argmax(1)
    k = scores.shape[1]
    # block boundaries must not matter: 3 rows, 7 rows, 64 rows per block, and the default
    for block_bytes in (3 * k, 7 * k, 64 * k, None):
        r = sinkhorn_labels(q, b=b, tol=1e-6, n_iters=5000, block_bytes=block_bytes)
        assert r.error <= 1e-6
        assert torch.equal(r.labels, expected)
        torch.testing.assert_close(_centred(r.log_v), _centred(dense.log_v), atol=2e-5, rtol=0)
        torch.testing.assert_close(r.label_mass, torch.bincount(expected, minlength=k).double() / len(scores))


@pytest.mark.parametrize("n_iters", [0, 1, 5])
def test_plain_iterations_follow_the_dense_solver_step_by_step(n_iters):
    """Same start, same plain updates: after n column updates both report the same error."""
    scores, _, b = _on_grid_problem(seed=1)
    q = quantize_scores([scores], EPS)
    dense = sinkhorn(scores, EPS, b=b, n_iters=n_iters, overrelax=False)
    ours = sinkhorn_labels(q, b=b, n_iters=n_iters, overrelax=False, block_bytes=50 * scores.shape[1])
    assert ours.n_iters == dense.n_iters == n_iters
    assert ours.error == pytest.approx(dense.error, rel=1e-4)
    torch.testing.assert_close(_centred(ours.log_v), _centred(dense.log_v), atol=1e-5, rtol=0)


def test_general_scores_agree_with_the_dense_float64_labels_on_99_percent_of_rows():
    g = torch.Generator().manual_seed(0)
    scores = torch.log_softmax(torch.randn(5000, 50, generator=g), dim=1)
    b = torch.distributions.Dirichlet(torch.full((50,), 30.0)).sample().double()
    dense = sinkhorn(scores.double(), EPS, b=b, tol=1e-8, n_iters=20000).plan.argmax(1)
    q = quantize_scores(scores.split(1000), EPS)
    r = sinkhorn_labels(q, b=b, tol=1e-3)
    assert r.error <= 1e-3 and r.n_iters < 100
    assert float((r.labels == dense).double().mean()) >= 0.99
    assert r.floor_mass < 1e-10
    # the hard labels are (nearly) as balanced as the prior
    assert float((r.label_mass / b - 1).abs().max()) < 0.2


def test_codes_take_one_byte_per_entry_and_chunking_does_not_matter():
    scores = torch.log_softmax(torch.randn(1000, 30, generator=torch.Generator().manual_seed(4)), dim=1)
    whole = quantize_scores([scores], EPS)
    # one byte per entry, and a float32 step per row
    assert whole.codes.dtype == torch.uint8 and whole.nbytes == 1000 * 30 + 1000 * 4 and whole.shape == (1000, 30)
    filled = QuantizedScores(1000, 30, EPS)
    for start in range(0, 1000, 300):
        filled.write(start, scores[start : start + 300].double())
    for other in (quantize_scores(scores.split(77), EPS), filled):
        # identical but where a value lies within float32 rounding of a half step (vectorized
        # and scalar tails of torch's kernels round differently): one code apart, rarely
        differ = other.codes != whole.codes
        assert int(differ.sum()) <= 3 and int((other.codes.int() - whole.codes.int()).abs().max()) <= 1
    # the rounded scores are within eps * step / 2 of the given ones (up to each row's constant)
    diff = scores - whole.rounded_scores().float()
    off = (diff - diff.gather(1, scores.argmax(1, keepdim=True))).abs()
    above_floor = (whole.codes < 255) | (whole.row_step < whole.step)[:, None]
    assert float(off[above_floor].max()) <= EPS * float(whole.row_step.max()) / 2 + 1e-5
    # unconfident rows (span < depth) get a finer step: 1/255 of their span
    span = (scores.amax(1) - scores.amin(1)) / EPS
    torch.testing.assert_close(whole.row_step, (span / 255).clamp(max=whole.step))


def test_warm_start_and_offsets_save_iterations():
    scores = torch.log_softmax(2 * torch.randn(3000, 40, generator=torch.Generator().manual_seed(3)), dim=1)
    q = quantize_scores([scores], EPS)
    cold = sinkhorn_labels(q, tol=1e-3)
    assert cold.n_iters > 20
    warm = sinkhorn_labels(q, tol=1e-3, warm_start=cold)
    assert warm.n_iters <= 2 and torch.equal(warm.labels, cold.labels)
    # a dense solution of the unrounded scores is a valid warm start too (log v up to row constants)
    dense = sinkhorn(scores, EPS, tol=1e-5)
    assert isinstance(dense, SinkhornResult)
    assert sinkhorn_labels(q, tol=1e-3, warm_start=dense).n_iters < cold.n_iters / 2
    # a grid centred on the solution starts near it (the rounding differs, so not exactly there)
    centred = quantize_scores([scores], EPS, offsets=cold.log_v)
    again = sinkhorn_labels(centred, tol=1e-3)
    assert again.n_iters < cold.n_iters / 2 and float((again.labels == cold.labels).double().mean()) > 0.99


def test_an_unwanted_cluster_lands_on_the_floor_and_recentring_fixes_it():
    """A cluster 5 nats below every sample's best (125 units at eps 0.04, beyond the grid's 64)."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2000, 10, generator=g)
    logits[:, 0] -= 5.0
    scores = torch.log_softmax(logits, dim=1)
    dense = sinkhorn(scores.double(), EPS, tol=1e-8, n_iters=50000).plan.argmax(1)
    first = sinkhorn_labels(quantize_scores([scores], EPS), tol=1e-3)
    assert math.isfinite(first.error) and first.error <= 1e-3 and bool(torch.isfinite(first.log_v).all())
    assert first.floor_mass > 0.01  # cluster 0's mass (1/10) comes from floor entries
    assert float((first.label_mass * 10 - 1).abs().max()) > 0.5  # hard labels far from balanced
    # each re-centring moves the grid by up to its depth: two reach the 124 units needed here
    result = first
    for _ in range(2):
        result = sinkhorn_labels(quantize_scores([scores], EPS, offsets=result.log_v), tol=1e-3)
    assert result.floor_mass < 1e-6
    assert float((result.labels == dense).double().mean()) >= 0.99
    assert float((result.label_mass * 10 - 1).abs().max()) < 0.1


def test_minus_inf_scores_count_as_the_floor():
    scores = torch.log_softmax(torch.randn(200, 5), dim=1)
    scores[:, 3] = -math.inf
    q = quantize_scores([scores], EPS)
    assert bool((q.codes[:, 3] == 255).all())
    r = sinkhorn_labels(q, tol=1e-3)
    assert r.error <= 1e-3 and math.isfinite(r.floor_mass)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: quantize_scores([s], 0.0),
        lambda s: quantize_scores([s], math.nan),
        lambda s: quantize_scores([s], EPS, depth=200.0),
        lambda s: quantize_scores([s], EPS, n_rows=11),
        lambda s: quantize_scores([], EPS),
        lambda s: quantize_scores([s], EPS, offsets=torch.zeros(4)),
        lambda s: quantize_scores([torch.where(s > -1.5, s, torch.full_like(s, math.nan))], EPS),
        lambda s: quantize_scores([torch.full_like(s, -math.inf)], EPS),
        lambda s: sinkhorn_labels(quantize_scores([s], EPS), b=torch.ones(3) / 3),
        lambda s: sinkhorn_labels(quantize_scores([s], EPS), b=torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])),
        lambda s: sinkhorn_labels(quantize_scores([s], EPS), b=torch.full((5,), 0.5)),
        lambda s: sinkhorn_labels(quantize_scores([s], EPS), warm_start=torch.zeros(4)),
        lambda s: sinkhorn_labels(quantize_scores([s], EPS), tol=0.0),
        lambda s: sinkhorn_labels(s, tol=1e-3),
    ],
)
def test_rejects_bad_input(call):
    scores = torch.log_softmax(torch.randn(10, 5), dim=1)
    with pytest.raises((ValueError, TypeError)):
        call(scores)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_codes_give_the_cpu_labels():
    scores = torch.log_softmax(torch.randn(4000, 64, generator=torch.Generator().manual_seed(5)), dim=1)
    cpu = sinkhorn_labels(quantize_scores([scores], EPS), tol=1e-4)
    gpu = sinkhorn_labels(quantize_scores([scores.cuda()], EPS), tol=1e-4)
    assert gpu.labels.is_cuda
    assert float((gpu.labels.cpu() == cpu.labels).double().mean()) > 0.999
    torch.testing.assert_close(gpu.log_v.cpu(), cpu.log_v, atol=1e-3, rtol=0)


def _distributed_worker(rank, world, init_file, scores, b, queue):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = scores.shape[0]
    own = scores[rank * n // world : (rank + 1) * n // world]  # uneven shares
    r = sinkhorn_labels(quantize_scores([own], EPS), b=b, tol=1e-4, distributed=True)
    try:
        sinkhorn_labels(quantize_scores([own], EPS), b=b.roll(rank), tol=1e-4, distributed=True)
        mismatch = None
    except ValueError as error:
        mismatch = str(error)
    queue.put((rank, r.labels.numpy(), r.log_v.numpy(), r.n_iters, r.error, r.label_mass.numpy(), mismatch))
    dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_distributed_rows_get_the_labels_of_the_global_problem(tmp_path):
    import torch.multiprocessing as mp

    scores = torch.log_softmax(2 * torch.randn(1001, 12, generator=torch.Generator().manual_seed(6)), dim=1)
    b = torch.distributions.Dirichlet(torch.full((12,), 10.0)).sample().double()
    whole = sinkhorn_labels(quantize_scores([scores], EPS), b=b, tol=1e-4)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_distributed_worker, args=(r, 2, str(tmp_path / "init"), scores, b, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict()
    for _ in procs:
        out = queue.get(timeout=120)
        got[out[0]] = out[1:]
    for p in procs:
        p.join(timeout=60)
    labels = np.concatenate([got[0][0], got[1][0]])
    assert got[0][2] == got[1][2] == whole.n_iters and got[0][3] == got[1][3]
    assert got[0][3] == pytest.approx(whole.error, abs=5e-6)  # column sums accurate to ~1e-6
    np.testing.assert_array_equal(labels, whole.labels.numpy())
    np.testing.assert_allclose(got[0][1], whole.log_v.numpy(), atol=1e-4)  # float32 sums in other orders
    np.testing.assert_allclose(got[0][4], whole.label_mass.numpy())
    assert all("different" in got[r][5] for r in range(2))

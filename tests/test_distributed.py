"""Data-parallel training over several processes (what torchrun sets up), on the CPU with Gloo.

One module fixture spawns 2 processes once (torchrun's environment variables, a free port on
127.0.0.1, one thread each); they run every distributed computation below and save what they
got, and the tests compare it with the same computations in a single process:

1. distributed Sinkhorn on two halves of a batch == Sinkhorn on the whole batch; SeLa's
   whole-data labels and CLOT's neighbour mining, each process taking a share of the rows, equal
   those of one process;
2. NT-Xent with gathered negatives: each process's loss is the whole-batch loss restricted to its
   anchors (so the mean over processes is the single-process loss), gradients included;
3. a 2-process CLOT run (feature vectors, global batch 16 = 2 x 8) has the loss curve and the
   predictions of a 1-process run with the same global batches (the reference is a world-size-1
   process group, so that both runs draw their batches from the same seeded permutation).
   Batch norm would make the runs differ by design: each process normalises with its own 8
   samples, and SyncBatchNorm, which would fix that, does not run on the CPU in PyTorch 2.13
   (it raises "SyncBatchNorm expected input tensor to be on GPU"; the engine turns
   --sync-batchnorm on CPU into a UserError, checked here). The comparison therefore runs the
   method with its batch-norm layers replaced by identities, and with fixed (non-random) views,
   since each process draws its own augmentations. Everything else is the real path: the
   engine's sharding, DistributedDataParallel, the all-reduced Sinkhorn marginals and predicted
   mass, the gathered negatives, the all-reduced epoch losses and the gathered predictions.

It also checks that only rank 0 writes the run folder, that every process returns rank 0's
metrics, and that a 2-process run interrupted after 2 of 3 epochs resumes to the same result.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from otclust import distributed as dist_utils
from otclust.losses import nt_xent_loss
from otclust.ot import sinkhorn

WORLD = 2
TIMEOUT_S = 180


# --- inputs shared by the processes and the single-process references ---------------------------
def _sinkhorn_inputs():
    g = torch.Generator().manual_seed(0)
    scores = torch.log_softmax(3 * torch.randn(24, 5, generator=g), dim=1)
    b = torch.tensor([0.1, 0.15, 0.2, 0.25, 0.3])
    return scores, b


def _sela_labels() -> dict:
    """SeLa's labels of 47 feature vectors by the dense and the 8-bit (chunked) paths, same network."""
    from otclust.estimator import dataset_from_array
    from otclust.methods.base import InputSpec
    from otclust.methods.sela import Sela, SelaParams

    x, _ = _features()
    dataset = dataset_from_array(x[:47])
    torch.manual_seed(0)
    method = Sela(3, InputSpec.from_dataset(dataset), SelaParams(sinkhorn_eps=0.1, n_heads=2, sinkhorn_tol=1e-4, sinkhorn_iters=5000))
    labels = {"rows_scored": []}
    for name in ("head_log_probs", "head_codes"):  # record how many samples this process scores
        original = getattr(method, name)
        setattr(method, name, lambda data, *a, _f=original, **k: labels["rows_scored"].append(len(data)) or _f(data, *a, **k))
    for path, limit in (("dense", 2.0), ("quantized", 1e-9)):
        method.params.dense_label_limit_gb = limit
        method.update_labels(dataset.data)
        assert [solve["path"] for solve in method.last_label_solve] == [path, path]
        labels[path] = method.labels.clone()
    return labels


def _neighbor_features():
    return torch.randn(23, 6, generator=torch.Generator().manual_seed(2))  # 12 + 11 rows per process


def _nt_xent_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)


def _features():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(3, 6))
    x = np.concatenate([c + rng.normal(size=(16, 6)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(3), 16)


def _config(**changes):
    from otclust.config import FitConfig

    values = dict(
        method="clot", clusters=3, epochs=3, batch_size=16, lr=3e-3, seed=5, device="cpu", cluster_proportions="auto",
        params={"projection_dim": 16, "sinkhorn_iters": 50},
    )
    values.update(changes)
    return FitConfig(**values)


# --- what the comparison changes in the method ----------------------------------------------------
class _FixedViews:
    """Two deterministic, different views per batch (calls alternate between the two)."""

    def __init__(self, standardize):
        self.standardize = standardize
        self.calls = 0

    def __call__(self, features, generator=None):
        x = self.standardize(features)
        self.calls += 1
        return 0.9 * x if self.calls % 2 else x + 0.1 * torch.sin(3 * x)


def _strip_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _strip_batchnorm(child)


def _patch_engine_for_comparison() -> None:
    import otclust.engine as engine

    original = engine.build_method

    def build(config, spec):
        method = original(config, spec)
        _strip_batchnorm(method)
        method.augmenter = _FixedViews(method.standardize)
        return method

    engine.build_method = build


class _Stop(Exception):
    pass


def _run_summary(result, trainer) -> dict:
    return {
        "history": result.history,
        "proba": result.proba,
        "metrics": result.metrics,
        "writes": trainer.out is not None,
    }


# --- the processes ---------------------------------------------------------------------------------
def _worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if Path("/sys/class/net/lo").exists():
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch.distributed as dist

    from otclust.engine import Trainer
    from otclust.errors import UserError
    from otclust.estimator import dataset_from_array

    folder = Path(folder)
    out: dict = {"device": str(dist_utils.init_from_env("cpu"))}
    out["rank"], out["world"], out["distributed"] = dist_utils.rank(), dist_utils.world_size(), dist_utils.is_distributed()

    # 1. Sinkhorn: this process's half of the rows, column sums all-reduced.
    scores, b = _sinkhorn_inputs()
    half = scores.chunk(WORLD)[rank]
    out["plan_fixed"] = sinkhorn(half, eps=0.1, b=b, n_iters=300, distributed=True).plan
    out["plan_tol"] = sinkhorn(half, eps=0.05, b=b, tol=1e-5, distributed=True).plan
    # Processes given different priors must all fail at once instead of waiting for each other.
    own_b = b.roll(rank)
    try:
        sinkhorn(half, eps=0.05, b=own_b, tol=1e-5, distributed=True)
        out["prior_mismatch_error"] = None
    except ValueError as error:
        out["prior_mismatch_error"] = str(error)

    # 1b. SeLa's whole-data labels: each process scores its share (23 and 24 of 47 samples).
    out["sela_labels"] = _sela_labels()

    # 1c. Neighbour mining (CLOT's views, the read-out's smoothing): each process ranks its share of the rows, the shares are gathered.
    from otclust.readout import neighbors

    gather = neighbors.all_gather_rows
    neighbors.all_gather_rows = lambda rows: out.setdefault("neighbor_rows_ranked", len(rows)) and gather(rows)
    out["neighbors"] = neighbors.nearest_neighbors(_neighbor_features(), 4, chunk=5)
    neighbors.all_gather_rows = gather
    # The search by inverted lists (large N): the same cells on every process, each its share of the queries.
    out["neighbors_by_cells"] = neighbors.nearest_neighbors(_neighbor_features(), 4, cells=5, probes=2)

    # 2. NT-Xent with the negatives of both processes.
    z_a, z_b = (z.chunk(WORLD)[rank].clone().requires_grad_(True) for z in _nt_xent_inputs())
    loss = nt_xent_loss(z_a, z_b, 0.5, gather=True)
    loss.backward()
    out["nt_xent"], out["nt_xent_grad"] = loss.item(), (z_a.grad, z_b.grad)
    out["nt_xent_local"] = nt_xent_loss(z_a.detach(), z_b.detach(), 0.5).item()

    # Errors every process raises together (before any collective of the run).
    x, labels = _features()
    dataset = dataset_from_array(x)
    dataset.labels = labels
    for key, config in (("sync_bn_error", _config(sync_batchnorm=True)), ("batch_error", _config(batch_size=15))):
        try:
            Trainer(config, progress=False, log=lambda m: None).fit(dataset)
            out[key] = None
        except UserError as error:
            out[key] = str(error)

    # 3. Training: a straight run, and a run interrupted after 2 epochs then resumed.
    _patch_engine_for_comparison()
    trainer = Trainer(_config(), out_dir=folder / "straight", progress=False, log=lambda m: None)
    out["straight"] = _run_summary(trainer.fit(dataset), trainer)

    trainer = Trainer(_config(), out_dir=folder / "resumed", progress=False, log=lambda m: None)
    trainer.checkpoint_every_seconds = 0  # a checkpoint after every epoch, so that one is there at epoch 2
    original, calls = trainer._train_one_epoch, []

    def stop_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise _Stop
        calls.append(1)
        return original(*args, **kwargs)

    trainer._train_one_epoch = stop_after_two
    try:
        trainer.fit(dataset)
    except _Stop:
        pass
    trainer = Trainer(_config(), out_dir=folder / "resumed", progress=False, log=lambda m: None)
    out["resumed"] = _run_summary(trainer.fit(dataset, resume=True), trainer)
    torch.save(out, folder / f"rank{rank}.pt")
    dist.destroy_process_group()

    if rank == 0:
        # The reference: the same code in a process group of one, hence the same global batches.
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        trainer = Trainer(_config(), progress=False, log=lambda m: None)
        torch.save(_run_summary(trainer.fit(dataset), trainer), folder / "reference.pt")
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("distributed")
    for name in ("straight", "resumed"):
        (folder / name).mkdir()
    # Forked processes start at once with torch already imported (spawned ones re-import it,
    # seconds each on a busy machine). The first optimizer imports torch._dynamo: do it here once.
    import torch._dynamo  # noqa: F401

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(_worker, args=(_free_port(), str(folder)), nprocs=WORLD, join=False, start_method=method)
    # A collective that one process skips hangs the others: fail instead of waiting forever.
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):  # raises if a process failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} processes did not finish in {TIMEOUT_S} s (a collective out of step?)")
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"ranks": ranks, "reference": torch.load(folder / "reference.pt", weights_only=False), "folder": folder}


# --- the tests ----------------------------------------------------------------------------------------
def test_processes_join_one_gloo_group(runs):
    assert [r["rank"] for r in runs["ranks"]] == [0, 1]
    assert all(r["world"] == 2 and r["distributed"] and r["device"] == "cpu" for r in runs["ranks"])


def test_distributed_sinkhorn_equals_sinkhorn_on_the_whole_batch(runs):
    scores, b = _sinkhorn_inputs()
    n = scores.shape[0]
    for key, kwargs in (("plan_fixed", dict(eps=0.1, n_iters=300)), ("plan_tol", dict(eps=0.05, tol=1e-5))):
        whole = sinkhorn(scores, b=b, **kwargs).plan
        halves = torch.cat([r[key] for r in runs["ranks"]])
        # Compared as n * plan (rows sum to 1), so 1e-5 is relative to an entry's scale.
        torch.testing.assert_close(halves * n, whole * n, atol=1e-5, rtol=0)


def test_sela_labels_of_shards_are_those_of_one_process(runs):
    """Each process scored and solved its own rows (columns all-reduced), all got all labels."""
    reference = _sela_labels()  # the same code in this single process: no sharding
    assert set(reference["rows_scored"]) == {47}
    for rank, result in enumerate(runs["ranks"]):
        assert set(result["sela_labels"]["rows_scored"]) == {(23, 24)[rank]}
        for path in ("dense", "quantized"):
            assert result["sela_labels"][path].shape == (2, 47)
            assert torch.equal(result["sela_labels"][path], reference[path]), path


def test_neighbour_mining_split_over_processes_equals_one_process(runs):
    from otclust.readout import nearest_neighbors

    expected = nearest_neighbors(_neighbor_features(), 4)
    assert [out["neighbor_rows_ranked"] for out in runs["ranks"]] == [12, 11]  # split, not repeated
    for out in runs["ranks"]:
        assert torch.equal(out["neighbors"], expected)
    by_cells = nearest_neighbors(_neighbor_features(), 4, cells=5, probes=2)
    assert not torch.equal(by_cells, expected)  # 2 of 5 cells probed: some neighbours differ, so the shares must agree on the cells
    for out in runs["ranks"]:
        assert torch.equal(out["neighbors_by_cells"], by_cells)


def test_processes_with_different_priors_all_get_an_error_instead_of_a_hang(runs):
    for rank in range(WORLD):
        assert "different cluster priors" in runs["ranks"][rank]["prior_mismatch_error"]


def test_gathered_nt_xent_is_the_whole_batch_loss_on_each_process_anchors(runs):
    z_a, z_b = (z.clone().requires_grad_(True) for z in _nt_xent_inputs())
    n = z_a.shape[0]
    whole = nt_xent_loss(z_a, z_b, 0.5)
    # The single-process loss per anchor, to restrict it to each process's anchors.
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    logits = (z @ z.T / 0.5).fill_diagonal_(float("-inf"))
    per_anchor = F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]), reduction="none")
    share = n // WORLD
    for rank, result in enumerate(runs["ranks"]):
        mine = torch.cat([torch.arange(rank * share, (rank + 1) * share), n + torch.arange(rank * share, (rank + 1) * share)])
        assert result["nt_xent"] == pytest.approx(per_anchor[mine].mean().item(), abs=1e-5)
        assert result["nt_xent"] != pytest.approx(result["nt_xent_local"], abs=1e-3)  # the gather did something
    assert np.mean([r["nt_xent"] for r in runs["ranks"]]) == pytest.approx(whole.item(), abs=1e-5)
    # Gradients: DDP averages over processes, so each row must get WORLD x d(whole loss)/d(row).
    (WORLD * whole).backward()
    grad_a = torch.cat([r["nt_xent_grad"][0] for r in runs["ranks"]])
    grad_b = torch.cat([r["nt_xent_grad"][1] for r in runs["ranks"]])
    torch.testing.assert_close(grad_a, z_a.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_b, z_b.grad, atol=1e-5, rtol=1e-4)


def test_two_processes_train_like_one_on_the_same_global_batches(runs):
    reference = runs["reference"]
    for result in runs["ranks"]:
        run = result["straight"]
        losses = [row["loss"] for row in run["history"]]
        assert len(losses) == 3
        np.testing.assert_allclose(losses, [row["loss"] for row in reference["history"]], rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(run["proba"], reference["proba"], atol=1e-3)
    # Losses must actually move, or the comparison says little.
    assert abs(losses[0] - losses[-1]) > 1e-3


def test_only_rank_0_writes_and_every_process_returns_its_metrics(runs):
    rank0, rank1 = (r["straight"] for r in runs["ranks"])
    assert rank0["writes"] and not rank1["writes"]
    assert rank0["metrics"] == rank1["metrics"] and "acc" in rank0["metrics"]
    assert rank0["history"] == rank1["history"]
    folder = runs["folder"] / "straight"
    assert {"config.yaml", "model.pt", "metrics.jsonl", "metrics.json", "assignments.csv"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "metrics.json").read_text()) == rank0["metrics"]
    assert len((folder / "assignments.csv").read_text().splitlines()) == 1 + 48
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_an_interrupted_two_process_run_resumes_to_the_same_result(runs):
    for result in runs["ranks"]:
        straight, resumed = result["straight"], result["resumed"]
        assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
        np.testing.assert_allclose([r["loss"] for r in resumed["history"]], [r["loss"] for r in straight["history"]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(resumed["proba"], straight["proba"], atol=1e-5)


def test_sync_batchnorm_on_cpu_and_an_indivisible_batch_are_clear_errors(runs):
    for result in runs["ranks"]:
        assert "--sync-batchnorm needs CUDA" in result["sync_bn_error"]
        assert "multiple of the 2 processes" in result["batch_error"]


def test_helpers_are_identities_in_one_process():
    assert not dist_utils.is_distributed() and dist_utils.rank() == 0 and dist_utils.world_size() == 1
    assert dist_utils.is_main_process()
    x = torch.randn(3, 2)
    assert dist_utils.all_gather_with_grad(x) is x and dist_utils.broadcast_object({"a": 1}) == {"a": 1}
    z_a, z_b = _nt_xent_inputs()
    assert nt_xent_loss(z_a, z_b, 0.5, gather=True).item() == nt_xent_loss(z_a, z_b, 0.5).item()

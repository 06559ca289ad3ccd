"""benchmarks/train_step.py and step_levers.py: every method's step runs as `fit` would set it up
(some schedules are fractions of the run's length, which a bare Trainer lacks)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import train_step  # noqa: E402

from otclust.methods import available_methods, get_method_class  # noqa: E402


@pytest.mark.parametrize("name", available_methods())
def test_every_method_gets_a_ready_training_step(name, blobs):
    ready = train_step.ready_method(name, blobs, batch_size=32)
    if ready is None:  # only a method without a training step (k-means) may come back empty
        assert not get_method_class(name).trainable
        return
    method, optimizer = ready
    before = [p.detach().clone() for p in method.parameters() if p.requires_grad]
    indices = torch.arange(32)
    loss = method.training_step(blobs.data[indices], indices)["loss"]
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = [p.detach() for p in method.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_profile_gives_every_phase_a_share_and_counts_the_operators(blobs):
    timers, per_step, ops = train_step.profile("clot", blobs, batch_size=32, steps=2, warmup=1, device="cpu")
    assert set(ops) <= {"augment", "forward+loss", "ot", "backward", "optimizer"}
    assert all(ops[phase] > 0 for phase in ("augment", "forward+loss", "ot", "backward", "optimizer"))
    ops = sum(ops.values())
    assert per_step > 0
    assert {"augment", "forward", "backward", "optimizer"} <= set(timers)
    assert timers["ot"] > 0  # CLOT solves its heads' problems together (solve_transports)
    assert sum(timers.values()) <= per_step * 1.01  # the phases split the step, never more
    # forward, backward and Adam of a CNN with two heads: hundreds of operators, each a kernel launch on a GPU
    assert 100 < ops < 20000


@pytest.mark.parametrize("levers", ["LEVERS", "CUDA_LEVERS"])
def test_every_lever_makes_a_step_and_says_its_batch(levers, blobs):
    """Each lever of step_levers.py, CUDA's too (run here on the CPU: float16 autocast becomes
    bfloat16), builds a step that runs; the larger-batch lever reports its own batch size."""
    import step_levers

    table = getattr(step_levers, levers)
    assert "float32" in table  # the reference every row is compared with
    for label, lever in table.items():
        if lever.get("compile"):
            continue  # TorchInductor's first compile takes most of a minute on 2 cores
        settings = {key: value for key, value in lever.items() if key != "params"}
        step, _, batch = step_levers.make_step("clot", blobs, 16, {}, extra_params=lever.get("params"), **settings)
        assert batch == 16 * lever.get("batch_factor", 1), label
        step()
    # a lever that sets a method parameter names the methods that have it
    assert all(key in step_levers.LEVER_METHODS for lever in table.values() for key in lever.get("params", {}))


def test_a_trained_run_replaces_the_fresh_network(blobs, tmp_path):
    """--weights: the step starts from the run's network and mined neighbours, not a fresh one."""
    from otclust.checkpoint import read_checkpoint
    from otclust.config import FitConfig
    from otclust.engine import Trainer
    from otclust.runs import prepare_output_folder

    params = {"n_heads": 2, "neighbors": 3, "neighbor_start_fraction": 0.5, "neighbor_every_fraction": 0.5}
    config = FitConfig(method="clot", clusters=10, epochs=2, batch_size=32, seed=0, params=params)
    run = prepare_output_folder(tmp_path / "run")
    Trainer(config, out_dir=run, progress=False, log=lambda m: None).fit(blobs)
    saved = read_checkpoint(run / "model.pt")
    method, _ = train_step.ready_method("clot", blobs, 32, params, weights=run)
    for name, value in method.state_dict().items():
        torch.testing.assert_close(value, saved["model"][name], msg=name)
    assert torch.equal(method.neighbor_index, saved["method_state"]["neighbor_index"])
    fresh, _ = train_step.ready_method("clot", blobs, 32, params)
    assert not torch.equal(next(fresh.backbone.parameters()), next(method.backbone.parameters()))

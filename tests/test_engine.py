import json

import numpy as np
import pytest
import torch

from otclust.config import FitConfig
from otclust.engine import Trainer, load_trained, read_checkpoint
from otclust.errors import UserError
from otclust.runs import prepare_output_folder


def quiet():
    return lambda message: None


def test_run_folder_files(tmp_path, blobs):
    out = prepare_output_folder(tmp_path / "run")
    config = FitConfig(clusters=3, epochs=2, batch_size=40)
    Trainer(config, out_dir=out, progress=False, log=quiet()).fit(blobs)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    final = json.loads((out / "metrics.json").read_text())
    assert {"acc", "nmi", "ari", "seconds"} <= set(final)
    lines = (out / "assignments.csv").read_text().splitlines()
    assert lines[0] == "index,cluster,confidence,label" and len(lines) == 121
    assert read_checkpoint(out / "model.pt")["epoch"] == 2
    assert "method: clot" in (out / "config.yaml").read_text()


def test_resume_continues_to_the_same_result_as_an_uninterrupted_run(tmp_path, blobs):
    config = FitConfig(clusters=3, epochs=3, batch_size=40, seed=1)
    straight = Trainer(config, out_dir=prepare_output_folder(tmp_path / "a"), progress=False, log=quiet()).fit(blobs)
    short = FitConfig(clusters=3, epochs=3, batch_size=40, seed=1)
    out_b = prepare_output_folder(tmp_path / "b")
    # Simulate an interruption after epoch 2: train 2 of 3 epochs' worth, then resume.
    trainer = Trainer(short, out_dir=out_b, progress=False, log=quiet())
    trainer.checkpoint_every_seconds = 0  # a checkpoint after every epoch, so that one is there at epoch 2
    original = trainer._train_one_epoch
    calls = {"n": 0}

    def interrupt_after_two(*args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    trainer._train_one_epoch = interrupt_after_two
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(blobs)
    assert read_checkpoint(out_b / "model.pt")["epoch"] == 2
    resumed = Trainer(short, out_dir=prepare_output_folder(out_b, resume=True), progress=False, log=quiet()).fit(blobs, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    np.testing.assert_allclose(resumed.proba, straight.proba, atol=1e-4)


@pytest.mark.parametrize("every, in_loop", [(None, [1, 4]), (0, [1, 2, 3, 4])])
def test_checkpoints_are_written_at_most_every_interval_and_after_the_last_epoch(tmp_path, blobs, every, in_loop):
    """Epochs of milliseconds: with the default interval only the first and the last epoch's
    checkpoints (and the final one) are written, and metrics.jsonl still holds every epoch."""
    out = prepare_output_folder(tmp_path / "run")
    trainer = Trainer(FitConfig(clusters=3, epochs=4, batch_size=40), out_dir=out, progress=False, log=quiet())
    if every is not None:
        trainer.checkpoint_every_seconds = every
    saved, original = [], trainer._save_checkpoint
    trainer._save_checkpoint = lambda epoch, *rest: (saved.append(epoch), original(epoch, *rest))
    trainer.fit(blobs)
    assert saved == in_loop + [4]
    assert [row["epoch"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]
    assert read_checkpoint(out / "model.pt")["epoch"] == 4


def test_seed_makes_runs_reproducible(blobs):
    config = FitConfig(clusters=3, epochs=1, batch_size=40, seed=3)
    a = Trainer(config, progress=False, log=quiet()).fit(blobs)
    b = Trainer(config, progress=False, log=quiet()).fit(blobs)
    np.testing.assert_array_equal(a.proba, b.proba)


def test_load_trained_predicts_like_the_trainer(tmp_path, blobs):
    out = prepare_output_folder(tmp_path / "run")
    result = Trainer(FitConfig(clusters=3, epochs=1, batch_size=40), out_dir=out, progress=False, log=quiet()).fit(blobs)
    method, config = load_trained(out / "model.pt", device="cpu")
    proba = method.predict_proba(blobs.data).numpy()
    np.testing.assert_allclose(proba, result.proba, atol=1e-5)
    assert config.clusters == 3


def test_output_folder_protection(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        prepare_output_folder(folder)
    (folder / "metrics.json").write_text("{}")
    prepare_output_folder(folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"
    assert not (folder / "metrics.json").exists()
    with pytest.raises(UserError, match="resume"):
        prepare_output_folder(tmp_path / "missing", resume=True)


def test_too_many_clusters_is_a_user_error(blobs):
    with pytest.raises(UserError, match="more than"):
        Trainer(FitConfig(clusters=500, epochs=1), progress=False, log=quiet()).fit(blobs)


def test_unknown_method_parameter_is_a_user_error(blobs):
    with pytest.raises(UserError, match="valid ones"):
        Trainer(FitConfig(clusters=3, epochs=1, params={"lambda_": 3}), progress=False, log=quiet()).fit(blobs)


def test_a_step_that_float16_loss_scaling_skips_does_not_advance_the_schedule(blobs, monkeypatch):
    """CUDA's float16 AMP skips the optimizer's step when the scaled gradients overflow; the
    learning-rate schedule must count only the steps taken (and PyTorch must not warn that the
    scheduler ran before the optimizer). Loss scaling is switched on here on the CPU, and the
    first two steps' gradients overflow (inf), as float16 ones do while the scale is too large."""
    import warnings

    from otclust import engine
    from otclust.precision import Precision

    monkeypatch.setattr(engine, "resolve_precision", lambda *args, **kwargs: Precision(False, True, None))
    overflows = {"left": 2}

    def overflow(grad):
        if overflows["left"] > 0:
            overflows["left"] -= 1
            return torch.full_like(grad, float("inf"))
        return grad

    wrap, schedulers = engine.Trainer._wrap_for_training, []

    def wrap_with_overflow(self, method):
        next(p for p in method.parameters() if p.requires_grad).register_hook(overflow)
        return wrap(self, method)

    monkeypatch.setattr(engine.Trainer, "_wrap_for_training", wrap_with_overflow)
    make = engine.Trainer._make_scheduler
    monkeypatch.setattr(engine.Trainer, "_make_scheduler", lambda self, *args: schedulers.append(make(self, *args)) or schedulers[-1])
    trainer = Trainer(FitConfig(method="clot", clusters=3, epochs=2, batch_size=40, seed=0), progress=False, log=quiet())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lr_scheduler.step\\(\\)")
        trainer.fit(blobs)
    assert overflows["left"] == 0
    assert schedulers[0].last_epoch == trainer.total_steps - 2


def test_the_readout_says_what_it_fits_and_how_long_it_took(blobs):
    """After the last epoch line the read-out can run for minutes: it says so, then its time."""
    lines = []
    Trainer(FitConfig(method="clot", clusters=3, epochs=1, batch_size=40, seed=0, readout_params={"restarts": 3}), progress=False, log=lines.append).fit(blobs)
    start = next(i for i, line in enumerate(lines) if line.startswith("fitting the smoothed read-out"))
    assert lines[start] == f"fitting the smoothed read-out on {len(blobs.data)} images (k-means, 3 restarts, features smoothed over 10 neighbours)"
    assert lines[start + 1].startswith("read-out fitted in ") and lines[start + 1].endswith("s")
    assert any(line.startswith("epoch 1/1") for line in lines[:start])


@pytest.mark.parametrize("backbone", ["small-cnn", "pooled-cnn"])
def test_the_training_memory_estimate_counts_what_a_real_forward_holds(backbone):
    """Counted on meta tensors, the estimate is what the same network allocates on the CPU: its
    weights four times over (gradients, Adam's moments) and every layer's output twice per view."""
    from otclust.engine import training_memory_bytes
    from otclust.models.backbones import build_backbone

    network = build_backbone(backbone, 3, (40, 32), None)
    sizes = []
    for module in network.modules():
        if not list(module.children()):
            module.register_forward_hook(lambda m, i, output: sizes.append(output.numel()))
    network(torch.zeros(4, 3, 40, 32))
    weights = sum(p.numel() for p in network.parameters())
    assert training_memory_bytes(backbone, 3, (40, 32), batch_size=8) == int(4 * (4 * weights + 2 * 2 * 8 * sum(sizes) / 4))
    # The small CNN's last layer reads every position: 4x the area, about 4x the weights.
    if backbone == "small-cnn":
        assert training_memory_bytes(backbone, 3, (160, 128), 8) > 10 * training_memory_bytes(backbone, 3, (40, 32), 8)


def test_a_network_too_large_for_memory_is_refused_before_anything_is_built(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from otclust.cli import main
    from otclust.data import decode

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    monkeypatch.setattr(decode, "available_memory", lambda: 10**6)  # 1 MB free
    out = tmp_path / "run"
    assert main(["fit", "--data", f"folder:{photos}", "-k", "2", "--image-size", "20", "--epochs", "1", "--out", str(out), "--no-progress", "--no-cache"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert "training on 20x20 images in batches of 6 needs at least" in line and "lower --image-size" in line
    assert not out.exists()

import numpy as np
import pytest
import torch

from otclust import precision
from otclust.config import FitConfig
from otclust.engine import Trainer
from otclust.errors import UserError
from otclust.methods.base import InputSpec
from otclust.methods.clot import Clot, ClotParams
from otclust.precision import FLOAT32, cpu_computes_bfloat16, resolve_precision

CPU = torch.device("cpu")


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path):
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not cpu_computes_bfloat16(without)
    with_flag = tmp_path / "with"
    with_flag.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16\n")
    assert cpu_computes_bfloat16(with_flag) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert not cpu_computes_bfloat16(tmp_path / "missing")


def test_cpu_amp_is_bfloat16_without_a_scaler_and_falls_back_with_a_note(monkeypatch):
    assert resolve_precision(True, False, CPU) == FLOAT32  # amp alone is CUDA's
    monkeypatch.setattr(precision, "cpu_computes_bfloat16", lambda: True)
    chosen = resolve_precision(True, True, CPU)
    assert chosen.autocast and not chosen.grad_scaler and chosen.search_dtype == torch.bfloat16
    notes = []
    monkeypatch.setattr(precision, "cpu_computes_bfloat16", lambda: False)
    assert resolve_precision(True, True, CPU, notes.append) == FLOAT32
    assert len(notes) == 1 and "float32" in notes[0]


def test_cpu_amp_must_be_a_boolean():
    with pytest.raises(UserError, match="cpu_amp must be true or false"):
        FitConfig(cpu_amp="yes").validate()


def test_cpu_autocast_leaves_the_transport_in_float32():
    # The solvers' products (torch.mv, matmul with out=) are not among the ops CPU autocast runs
    # in bfloat16, so under --cpu-amp the pseudo-labels are the float32 ones. A solver rewritten
    # with autocast's ops (@, mm) would move the plan by about 1e-3 and fail here.
    spec = InputSpec(n_samples=256, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    scores = torch.log_softmax(3 * torch.randn(256, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    sizes = torch.full((8,), 1 / 8)
    for mode in ("balanced", "semi-relaxed", "partial"):
        method = Clot(8, spec, ClotParams())
        method.size_penalty = 1.0 if mode == "semi-relaxed" else None
        method.partial_tau, method.training_progress = (1.0, 0.5) if mode == "partial" else (None, 0.0)
        reference = method.solve_transport(scores, eps=0.2, b=sizes, n_iters=50)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = method.solve_transport(scores, eps=0.2, b=sizes, n_iters=50)
        assert mixed.plan.dtype == torch.float32
        torch.testing.assert_close(mixed.plan, reference.plan, rtol=0, atol=0)


def test_fit_with_cpu_amp_trains_in_bfloat16_reads_out_in_float32_and_scores_like_float32(monkeypatch, blobs):
    monkeypatch.setattr(precision, "cpu_computes_bfloat16", lambda: True)  # emulated where not native
    seen = {"train": set(), "readout": set()}
    phase = {"now": None}
    config = FitConfig(clusters=3, epochs=3, batch_size=40, seed=0, cpu_amp=True, params={"neighbors": 5, "neighbor_start_fraction": 0.34, "neighbor_every_fraction": 0.34})
    trainer = Trainer(config, progress=False, log=lambda message: None)

    def during(name, original):
        def wrapped(self, *args, **kwargs):
            phase["now"] = name
            hook = self.method.backbone.register_forward_hook(lambda module, inputs, output: seen[phase["now"]].add(output.dtype))
            try:
                return original(self, *args, **kwargs)
            finally:
                hook.remove()

        return wrapped

    monkeypatch.setattr(Trainer, "_train_one_epoch", during("train", Trainer._train_one_epoch))
    monkeypatch.setattr(Trainer, "_read_out", during("readout", Trainer._read_out))
    mixed = trainer.fit(blobs)
    assert seen == {"train": {torch.bfloat16}, "readout": {torch.float32}}
    plain = Trainer(FitConfig(clusters=3, epochs=3, batch_size=40, seed=0, params=config.params), progress=False, log=lambda message: None).fit(blobs)
    assert mixed.proba.dtype == np.float32
    assert mixed.metrics["acc"] >= plain.metrics["acc"] - 0.05


def _heads_and_losses():
    """(name, function of a generator) pairs: every head of otclust.models and every loss of
    otclust.losses on float32 inputs of a size where bfloat16 rounding shows."""
    from otclust import losses
    from otclust.methods.swav import prototype_scores
    from otclust.models import ClusterHead, CosineClusterHead, ProjectionHead

    def rand(generator, *shape):
        return torch.randn(*shape, generator=generator)

    def probs(generator, n, k):
        return torch.softmax(3 * rand(generator, n, k), dim=1)

    torch.manual_seed(0)
    linear, cosine, projection = ClusterHead(64, 10, n_heads=2), CosineClusterHead(64, 10, 2, 0.1), ProjectionHead(64, 32, 16)
    labels = torch.randint(10, (2, 48), generator=torch.Generator().manual_seed(1))
    return [
        ("ClusterHead", lambda g: torch.stack(linear(rand(g, 48, 64)))),
        ("CosineClusterHead", lambda g: torch.stack(cosine(rand(g, 48, 64)))),
        ("ProjectionHead", lambda g: projection(rand(g, 48, 64))),
        ("soft_cross_entropy", lambda g: losses.soft_cross_entropy(4 * rand(g, 48, 10), probs(g, 48, 10))),
        ("nt_xent_loss", lambda g: losses.nt_xent_loss(rand(g, 48, 16), rand(g, 48, 16), 0.5)),
        ("swapped_prediction_loss", lambda g: losses.swapped_prediction_loss([rand(g, 48, 10), rand(g, 48, 10)], [probs(g, 48, 10)] * 2)),
        ("assignment_feature_loss", lambda g: losses.assignment_feature_loss(rand(g, 48, 10), rand(g, 48, 10))),
        ("assignment_probability_loss", lambda g: losses.assignment_probability_loss(probs(g, 48, 10), probs(g, 48, 10))),
        ("cluster_regularization", lambda g: losses.cluster_regularization(probs(g, 48, 10))),
        ("multi_head_cross_entropy", lambda g: losses.multi_head_cross_entropy([rand(g, 48, 10), rand(g, 48, 10)], labels)),
        ("swav.prototype_scores", lambda g: torch.stack(prototype_scores([rand(g, 48, 16), rand(g, 48, 16)], rand(g, 10, 16)))),
        ("hierarchical_cross_entropy", lambda g: torch.stack(losses.hierarchical_cross_entropy(rand(g, 48, 8), rand(g, 48, 8, 3), labels[0] % 8, labels[1] % 3))),
    ]


@pytest.mark.parametrize("name, compute", _heads_and_losses(), ids=[name for name, _ in _heads_and_losses()])
def test_heads_and_losses_compute_in_float32_under_autocast(name, compute):
    # Only the backbone runs in 16 bits: a head or loss left to CPU autocast returns bfloat16
    # (8 significant bits) and misses its float32 value by about 1e-2 here.
    reference = compute(torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = compute(torch.Generator().manual_seed(2))
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=1e-6, atol=1e-6)


def test_in_float32_casts_tensors_in_lists_and_leaves_the_rest():
    seen = {}

    @precision.in_float32
    def record(values, scale, labels=None):
        seen.update(values=[v.dtype for v in values], scale=scale, labels=labels.dtype, autocast=torch.is_autocast_enabled("cpu"))
        return values[0] * scale

    out = record([torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.float16)], 3, labels=torch.arange(2))
    assert seen == {"values": [torch.float32, torch.float32], "scale": 3, "labels": torch.int64, "autocast": False}
    assert out.dtype == torch.float32

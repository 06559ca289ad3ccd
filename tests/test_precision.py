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

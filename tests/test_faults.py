"""Faults a run must survive: an output folder that cannot be made, running out of memory, a
disk that fills up during a checkpoint write, a loss that stops being finite, kill -9. Each ends
with one line (exit 2 on the command line), and what was already done stays usable."""

import errno
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from otclust.checkpoint import read_checkpoint
from otclust.cli import main
from otclust.config import FitConfig
from otclust.engine import Trainer
from otclust.errors import UserError, memory_guard
from otclust.methods import get_method_class
from otclust.runs import prepare_output_folder

ROOT = Path(__file__).resolve().parents[1]


def quiet(_message):
    pass


def one_line_error(capsys) -> str:
    """The command's error: exactly one line, no traceback (epoch lines may come before it)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("otclust: error")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def features(tmp_path):
    """Three separated groups of 5-d feature vectors as features:PATH data (fast to train)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c * 4, 1, size=(40, 5)) for c in range(3)]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x.labels.npy", np.repeat(np.arange(3), 40))
    return f"features:{tmp_path / 'x.npy'}"


def fit_args(data, out, epochs=3, *extra):
    return ["fit", "--data", data, "--clusters", "3", "--epochs", str(epochs), "--batch-size", "40", "--readout", "head", "--out", str(out), "--no-progress", *extra]


# --- the output folder --------------------------------------------------------------------
def test_out_under_a_file_is_one_line_before_any_work(tmp_path, features, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    loaded = []
    monkeypatch.setattr("otclust.commands.fit.load_dataset", lambda *a, **k: loaded.append(1))
    assert main(fit_args(features, blocker / "run")) == 2
    assert "is a file" in one_line_error(capsys)
    assert not loaded and blocker.read_text() == "mine"


def test_out_that_cannot_be_created_is_one_line(tmp_path, features, capsys, monkeypatch):
    """A read-only parent (simulated: the tests may run as root, who may write anywhere)."""

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(fit_args(features, tmp_path / "ro" / "run")) == 2
    line = one_line_error(capsys)
    assert "cannot create the output folder" in line and "Permission denied" in line


def test_a_not_writable_parent_is_refused_by_the_early_check(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(UserError, match="not writable"):
        prepare_output_folder(tmp_path / "a" / "run", check_only=True)


def test_an_unfinished_run_in_the_way_is_kept_and_resume_suggested(tmp_path, features, capsys):
    out = tmp_path / "run"
    assert main(fit_args(features, out, 1)) == 0
    assert main(fit_args(features, out, 1)) == 2  # a finished run: no --resume to suggest
    line = one_line_error(capsys)
    assert "already exists and it holds" in line and "--resume" not in line
    (out / "metrics.json").unlink()  # as a run killed before its end leaves it
    before = (out / "model.pt").read_bytes()
    assert main(fit_args(features, out, 1)) == 2
    assert "it is an unfinished run: --resume continues it, pass --overwrite, or choose another --out" in one_line_error(capsys)
    assert (out / "model.pt").read_bytes() == before
    (out / "model.pt").rename(tmp_path / "kept.pt")  # a --clusters auto search done, its refit not started
    (out / "k-search").mkdir()
    (out / "k-search" / "metrics.json").write_text("{}")
    assert main(fit_args(features, out, 1)) == 2
    assert "--resume continues it" in one_line_error(capsys)


def test_resume_with_other_settings_is_refused_and_keeps_the_run(tmp_path, features, capsys):
    out = tmp_path / "run"
    assert main(fit_args(features, out, 1)) == 0
    before = (out / "model.pt").read_bytes()
    capsys.readouterr()
    args = fit_args(features, out, 2, "--resume")
    args[args.index("--clusters") + 1] = "4"
    assert main(args) == 2
    error = one_line_error(capsys)
    assert "cannot resume: the checkpoint was trained with clusters=3, not 4" in error
    assert (out / "model.pt").read_bytes() == before
    # The command the error suggests resumes with the run's own settings.
    suggested = error.split("resume with the run's own settings, otclust ")[1].split()
    assert main([*suggested, "--epochs", "2", "--no-progress"]) == 0


def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tmp_path, features, capsys, monkeypatch):
    method_class = get_method_class("clot")
    original, calls = method_class.training_step, {"n": 0}

    def interrupted_in_epoch_2(self, batch, indices):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, batch, indices)

    monkeypatch.setattr(method_class, "training_step", interrupted_in_epoch_2)
    assert main(fit_args(features, tmp_path / "run")) == 130
    assert "use --resume" in capsys.readouterr().err
    assert read_checkpoint(tmp_path / "run" / "model.pt")["epoch"] == 1


def test_training_that_raises_still_restores_the_malloc_settings(blobs, monkeypatch):
    # A Python API caller keeps its process after the error: training's allocator settings
    # (otclust.allocator) must not stay behind in it.
    handed_back = []
    monkeypatch.setattr("otclust.engine.allocator.hand_back_freed_blocks", lambda: handed_back.append(1))
    monkeypatch.setattr(get_method_class("clot"), "training_step", raise_out_of_memory)
    with pytest.raises(UserError, match="out of memory"):
        Trainer(FitConfig(clusters=3, epochs=1, batch_size=40), progress=False, log=quiet).fit(blobs)
    assert handed_back == [1]


# --- out of memory ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1234 bytes")],
    ids=["MemoryError", "torch.OutOfMemoryError", "cpu-allocator"],
)
def test_memory_guard_turns_out_of_memory_into_one_line(error):
    with pytest.raises(UserError, match=r"^out of memory while training: lower --batch-size$"):
        with memory_guard("training", "lower --batch-size"):
            raise error


def test_memory_guard_leaves_other_errors_alone():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with memory_guard("training", "lower --batch-size"):
            raise RuntimeError("shape mismatch")


def raise_out_of_memory(*args, **kwargs):
    raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 987654321 bytes")


@pytest.mark.parametrize(
    "where,fragment",
    [
        ("training_step", "lower --batch-size (now 40)"),
        ("predict_proba", "--image-size"),
        ("on_fit_end", "--readout-param restarts"),
    ],
)
def test_out_of_memory_in_each_stage_of_fit_names_what_to_lower(blobs, monkeypatch, where, fragment):
    monkeypatch.setattr(get_method_class("clot"), where, raise_out_of_memory)
    with pytest.raises(UserError, match="out of memory") as caught:
        Trainer(FitConfig(clusters=3, epochs=1, batch_size=40), progress=False, log=quiet).fit(blobs)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_out_of_memory_while_predicting_from_a_checkpoint_names_its_batch_size(tmp_path, features, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(fit_args(features, out, 1)) == 0
    monkeypatch.setattr(get_method_class("clot"), "predict_proba", raise_out_of_memory)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(out / "model.pt"), "--data", features, "--out", str(tmp_path / "p.csv"), "--batch-size", "64"]) == 2
    assert "lower the batch size (now 64" in one_line_error(capsys)


def test_out_of_memory_anywhere_else_is_a_generic_one_line(tmp_path, features, capsys, monkeypatch):
    """E.g. while decoding the data: the command line's last-resort catch."""

    def decode(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("otclust.commands.fit.load_dataset", decode)  # where fit looks it up
    assert main(fit_args(features, tmp_path / "run")) == 2
    assert one_line_error(capsys).startswith("otclust: error: out of memory while running fit: ")


# --- disk full during a checkpoint write --------------------------------------------------
def fill_disk_during_write(monkeypatch, target: str, on_write: int):
    """The `on_write`-th atomic write of a file named `target` gets half its bytes written, then
    ENOSPC, as a full disk does."""
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
    state = {"writes": 0, "doomed": set()}

    def mkstemp(*args, **kwargs):
        handle, path = real_mkstemp(*args, **kwargs)
        if Path(path).name.startswith(f".{target}."):
            state["writes"] += 1
            if state["writes"] == on_write:
                state["doomed"].add(handle)
        return handle, path

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def fdopen(handle, *args, **kwargs):
        file = real_fdopen(handle, *args, **kwargs)
        return FullDisk(file) if handle in state["doomed"] else file

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    return state


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, features, capsys, monkeypatch):
    out = tmp_path / "run"
    state = fill_disk_during_write(monkeypatch, "model.pt", on_write=2)
    assert main(fit_args(features, out)) == 2
    line = one_line_error(capsys)
    assert state["doomed"] and "No space left on device" in line and "previous model.pt is kept" in line and "--resume" in line
    assert not list(out.glob(".*.tmp"))
    assert read_checkpoint(out / "model.pt")["epoch"] == 1
    monkeypatch.undo()
    assert main(fit_args(features, out, 3, "--resume")) == 0
    assert read_checkpoint(out / "model.pt")["epoch"] == 3


def test_disk_full_on_the_first_checkpoint_says_nothing_was_written(tmp_path, features, capsys, monkeypatch):
    out = tmp_path / "run"
    fill_disk_during_write(monkeypatch, "model.pt", on_write=1)
    assert main(fit_args(features, out)) == 2
    assert "nothing was written" in one_line_error(capsys)
    assert not (out / "model.pt").exists() and not list(out.glob(".*.tmp"))


# --- a loss that is no longer finite ------------------------------------------------------
@pytest.mark.parametrize("epoch", [2, 3])  # the checkpoint of epoch 1 is the latest in both (epochs of milliseconds)
def test_a_non_finite_loss_stops_with_epoch_and_step_and_resume_finishes_the_run(tmp_path, blobs, monkeypatch, epoch):
    config = FitConfig(clusters=3, epochs=3, batch_size=40, seed=2, params={"predict_by": "head"})
    straight = Trainer(config, out_dir=prepare_output_folder(tmp_path / "straight"), progress=False, log=quiet).fit(blobs)

    method_class = get_method_class("clot")
    original, calls = method_class.training_step, {"n": 0}

    def breaks_in_step_2(self, batch, indices):
        parts = original(self, batch, indices)
        calls["n"] += 1
        if calls["n"] == 3 * (epoch - 1) + 2:  # 120 samples / 40 = 3 steps an epoch
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(method_class, "training_step", breaks_in_step_2)
    out = prepare_output_folder(tmp_path / "run")
    with pytest.raises(UserError) as caught:
        Trainer(config, out_dir=out, progress=False, log=quiet).fit(blobs)
    message = str(caught.value)
    assert "\n" not in message and f"epoch {epoch}, step 2" in message and "nan" in message
    assert "end of epoch 1" in message and "--lr" in message
    assert read_checkpoint(out / "model.pt")["epoch"] == 1
    monkeypatch.undo()
    resumed = Trainer(config, out_dir=prepare_output_folder(out, resume=True), progress=False, log=quiet).fit(blobs, resume=True)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    np.testing.assert_allclose(resumed.proba, straight.proba, atol=1e-5)


def test_a_non_finite_loss_on_the_command_line_is_one_line_exit_2(tmp_path, features, capsys, monkeypatch):
    method_class = get_method_class("clot")
    original = method_class.training_step

    def always_infinite(self, batch, indices):
        parts = original(self, batch, indices)
        parts["loss"] = parts["loss"] + float("inf")
        return parts

    monkeypatch.setattr(method_class, "training_step", always_infinite)
    assert main(fit_args(features, tmp_path / "run")) == 2
    line = one_line_error(capsys)
    assert "epoch 1, step 1" in line and "no epoch had finished" in line


@pytest.mark.parametrize(
    "extra,where",
    [
        # One step at a huge rate: the loss was finite, the outputs NaN; this was scikit-learn's
        # "Input X contains NaN" paragraph at the read-out, after a NaN row in metrics.jsonl.
        (["--lr", "1e10"], "cluster probabilities became NaN or infinite in epoch 1 (training diverged)"),
        # Several steps: the NaN scores of the second step reached Sinkhorn, whose ValueError it was.
        (["--lr", "1e30", "--batch-size", "40"], "outputs became NaN or infinite at epoch 1, step 2 (training diverged)"),
    ],
)
def test_a_diverged_network_is_one_line_exit_2_without_nan_metrics(tmp_path, features, capsys, extra, where):
    out = tmp_path / "run"
    args = ["fit", "--data", features, "--clusters", "3", "--epochs", "1", "--out", str(out), "--no-progress", *extra]
    assert main(args) == 2
    line = one_line_error(capsys)
    assert where in line and "smaller --lr" in line
    assert not (out / "model.pt").exists() and not (out / "metrics.jsonl").exists()


def test_predict_refuses_a_model_whose_outputs_are_not_finite(tmp_path, features, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(fit_args(features, out, 1)) == 0
    capsys.readouterr()
    # A run trained before fit checked for divergence: predict wrote 'nan' confidences, exit 0.
    monkeypatch.setattr(get_method_class("clot"), "predict_proba", lambda self, batch: torch.full((len(batch), 3), float("nan")))
    assert main(["predict", "--checkpoint", str(out), "--data", features, "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 2
    assert "training diverged" in one_line_error(capsys)
    assert not (tmp_path / "p.csv").exists()


# --- kill -9 ------------------------------------------------------------------------------
def test_kill_9_then_resume_reaches_the_uninterrupted_metrics(tmp_path, features, monkeypatch):
    """Two trials of benchmarks/kill_resume.py (its 20-trial run is in docs/reliability.md): one
    killed at a random moment, one inside a checkpoint write; children are forked, so fast."""
    spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "benchmarks" / "kill_resume.py")
    kill_resume = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "kill_resume", kill_resume)  # its dataclasses look themselves up there
    spec.loader.exec_module(kill_resume)
    extra = ["--clusters", "3", "--batch-size", "40", "--readout", "head"]
    setup = kill_resume.Setup(root=tmp_path / "trials", data=features, epochs=3, extra=extra, pause=0.1)
    reference = kill_resume.uninterrupted(setup)
    rng = np.random.default_rng(1)
    trials = [kill_resume.trial(setup, reference, mode, rng, index) for index, mode in enumerate(["anytime", "in-write"])]
    for result in trials:
        assert result.resume_always_started and not result.failure, result
        assert result.metrics == reference.metrics and not result.stale_temp_files, result
    assert trials[1].killed_in_write and trials[1].resumes >= 1


def test_files_written_have_the_usual_mode_and_a_missing_folder_is_named(tmp_path):
    """Atomic writes go through a private temporary file: the result must not stay 0600 (a model
    to share), and a file it replaces keeps its mode; a missing folder is said as such."""
    import os
    import stat

    from otclust.errors import UserError
    from otclust.runs import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "new.bin", b"1")
        assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o644
        os.chmod(tmp_path / "new.bin", 0o640)
        atomic_write_bytes(tmp_path / "new.bin", b"2")
        assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o640 and (tmp_path / "new.bin").read_bytes() == b"2"
    finally:
        os.umask(old)
    with pytest.raises(UserError, match="the folder .*missing.deeper does not exist; create it"):
        atomic_write_bytes(tmp_path / "missing" / "deeper" / "m.pt", b"1")
    with pytest.raises(UserError, match="it is a folder; give a file name"):
        atomic_write_bytes(tmp_path, b"1")

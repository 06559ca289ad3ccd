"""Checkpoints load without running code: every reader refuses a crafted model.pt before
anything in it executes, old (format 1) files get a one-line way to convert them, and real
checkpoints of every method still round-trip."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from otclust import OTClust
from otclust.checkpoint import CHECKPOINT_FORMAT, OLD_FORMATS, read_checkpoint
from otclust.cli import main
from otclust.config import FitConfig
from otclust.engine import Trainer, load_trained
from otclust.errors import UserError
from otclust.methods import METHOD_MODULES
from otclust.runs import prepare_output_folder


class CreatesMarker:
    """Unpickling this calls open(marker, 'w'): a harmless stand-in for any code a crafted file runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def quiet(_message):
    pass


def malicious_checkpoint(path: Path, marker: Path, format_name: str = CHECKPOINT_FORMAT) -> Path:
    """A model.pt that looks like ours (right format tag, config, spec) with a payload inside."""
    torch.save({"format": format_name, "config": {"method": "clot"}, "spec": {}, "model": {}, "payload": CreatesMarker(marker)}, path)
    return path


def fit_tiny(out: Path, dataset, **settings) -> Path:
    config = FitConfig(**{"clusters": 3, "epochs": 1, "batch_size": 40, "readout": "head", **settings})
    Trainer(config, out_dir=prepare_output_folder(out), progress=False, log=quiet).fit(dataset)
    return out / "model.pt"


def test_the_payload_would_run_if_unpickled(tmp_path):
    """The test file is a real attack: plain unpickling creates the marker."""
    marker = tmp_path / "marker"
    torch.load(malicious_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def run_folder_with(tmp_path, dataset, model_pt_writer) -> Path:
    """A real run folder (config.yaml, metrics) whose model.pt is then replaced."""
    run = tmp_path / "run"
    fit_tiny(run, dataset)
    model_pt_writer(run / "model.pt")
    return run


ENTRY_POINTS = ["predict", "evaluate", "report", "fit --resume", "OTClust.load"]


def open_with(entry: str, run: Path, tmp_path: Path, capsys):
    """Feed run/model.pt to one CLI entry point in this process; returns (exit code, stderr)."""
    checkpoint = str(run / "model.pt")
    argv = {
        "predict": ["predict", "--checkpoint", checkpoint, "--data", "digits", "--out", str(tmp_path / "p.csv")],
        "evaluate": ["evaluate", "--checkpoint", checkpoint, "--data", "digits"],
        "report": ["report", str(run), "--overwrite"],
        "fit --resume": ["fit", "--resume", "--out", str(run), "--clusters", "3", "--epochs", "2", "--no-progress"],
    }[entry]
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def assert_refused(entry, run, tmp_path, capsys, fragment):
    if entry == "OTClust.load":
        with pytest.raises(UserError, match=fragment) as caught:
            OTClust.load(run / "model.pt", device="cpu")
        assert "\n" not in str(caught.value)
        return
    code, err = open_with(entry, run, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_crafted_checkpoint_never_runs_its_code(tmp_path, blobs, capsys, entry):
    marker = tmp_path / "marker"
    run = run_folder_with(tmp_path, blobs, lambda path: malicious_checkpoint(path, marker))
    assert_refused(entry, run, tmp_path, capsys, "could run code")
    assert not marker.exists()


def write_format_1(path: Path, source: Path) -> Path:
    """The checkpoint `source` as otclust before format 2 wrote it: numpy's random state and the
    estimator's labels as pickled numpy objects, tagged otclust-checkpoint-1."""
    checkpoint = read_checkpoint(source)
    checkpoint["format"] = OLD_FORMATS[0]
    if "rng" in checkpoint:
        name, keys, *rest = checkpoint["rng"]["numpy"]
        checkpoint["rng"]["numpy"] = (name, np.asarray(keys, dtype=np.uint32), *rest)
    if "labels" in checkpoint:
        checkpoint["labels"] = np.asarray(checkpoint["labels"])
    torch.save(checkpoint, path)
    with pytest.raises(Exception):  # really not loadable the safe way
        torch.load(path, weights_only=True)
    return path


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_old_checkpoint_is_refused_with_the_command_that_converts_it(tmp_path, blobs, capsys, entry):
    run = tmp_path / "run"
    new_pt = fit_tiny(run, blobs)
    current = tmp_path / "current.pt"
    current.write_bytes(new_pt.read_bytes())
    write_format_1(run / "model.pt", current)
    assert_refused(entry, run, tmp_path, capsys, "otclust upgrade-checkpoint")


def test_upgrade_checkpoint_converts_a_trusted_old_file_that_then_predicts_the_same(tmp_path, blob_images, capsys):
    images, _ = blob_images
    model = OTClust(n_clusters=3, epochs=1, batch_size=60, seed=0, params={"predict_by": "head"}).fit(images)
    model.save(tmp_path / "new.pt")
    old = write_format_1(tmp_path / "old.pt", tmp_path / "new.pt")
    converted = tmp_path / "converted.pt"
    capsys.readouterr()
    assert main(["upgrade-checkpoint", str(old), str(converted)]) == 0
    assert "unpickles" in capsys.readouterr().err
    torch.load(converted, weights_only=True)
    loaded = OTClust.load(converted, device="cpu")
    np.testing.assert_array_equal(loaded.predict(images), model.predict(images))
    np.testing.assert_array_equal(loaded.labels_, model.labels_)
    # It never overwrites by accident, and unpickles nothing that is not tagged format 1.
    assert main(["upgrade-checkpoint", str(old), str(converted)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    for path, why in ((converted, "already"), (malicious_checkpoint(tmp_path / "evil.pt", tmp_path / "marker"), "not an otclust checkpoint of format 1")):
        assert main(["upgrade-checkpoint", str(path), str(tmp_path / "again.pt")]) == 2
        err = capsys.readouterr().err
        assert why in err and "unpickles" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "marker").exists()


def test_upgraded_run_checkpoint_resumes(tmp_path, blobs):
    run = tmp_path / "run"
    fit_tiny(run, blobs)
    old = write_format_1(tmp_path / "old.pt", run / "model.pt")
    assert main(["upgrade-checkpoint", str(old), str(run / "model.pt"), "--overwrite"]) == 0
    args = ["fit", "--resume", "--out", str(run), "--clusters", "3", "--epochs", "2", "--batch-size", "40", "--readout", "head", "--no-progress"]
    assert main(args) == 0
    assert read_checkpoint(run / "model.pt")["epoch"] == 2


@pytest.mark.parametrize(
    "damage,fragment",
    [
        (lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]), "truncated, damaged"),
        (lambda path: path.write_bytes(b"\x00garbage" * 100), "truncated, damaged"),
        (lambda path: path.write_text("{}"), "truncated, damaged"),
        (lambda path: torch.save([1, 2, 3], path), "not an otclust checkpoint"),
        (lambda path: torch.save({"format": "otclust-checkpoint-99"}, path), "not an otclust checkpoint"),
        (lambda path: torch.save({"format": CHECKPOINT_FORMAT, "config": {}}, path), "not a complete"),
        (lambda path: torch.save({"format": CHECKPOINT_FORMAT, "config": {"nonsense": 1}, "spec": {}, "model": {}}, path), "can rebuild"),
        (lambda path: path.unlink(), "checkpoint not found"),
    ],
    ids=["truncated", "garbage", "text", "a-list", "unknown-format", "incomplete", "wrong-contents", "missing"],
)
def test_a_damaged_checkpoint_is_one_line(tmp_path, blobs, damage, fragment):
    run = tmp_path / "run"
    path = fit_tiny(run, blobs)
    damage(path)
    with pytest.raises(UserError, match=fragment) as caught:
        load_trained(path, device="cpu")
    assert "\n" not in str(caught.value)


def test_a_run_folder_loads_as_its_model_pt(tmp_path, blobs):
    """`otclust fit` prints the run folder and `otclust report` takes one: predict takes it too."""
    path = fit_tiny(tmp_path / "run", blobs)
    by_file, _ = load_trained(path, device="cpu")
    by_folder, _ = load_trained(path.parent, device="cpu")
    for name, tensor in by_file.state_dict().items():
        assert torch.equal(tensor, by_folder.state_dict()[name]), name
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="folder without a model.pt") as caught:
        load_trained(tmp_path / "empty", device="cpu")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("method", sorted(METHOD_MODULES))
def test_every_method_writes_a_checkpoint_that_loads_the_safe_way(tmp_path, blobs, method):
    """Each method's own state (pseudo-labels, queues, neighbours, ...) must be plain enough."""
    path = fit_tiny(tmp_path / "run", blobs, method=method, epochs=2, params={})
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["format"] == CHECKPOINT_FORMAT
    method_obj, _ = load_trained(path, device="cpu")
    assert method_obj.n_clusters == 3


def test_fit_predict_round_trip_reads_format_2(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["fit", "--data", "digits", "--clusters", "10", "--epochs", "1", "--batch-size", "256", "--readout", "head", "--out", str(run), "--no-progress"])
    assert code == 0
    assert torch.load(run / "model.pt", weights_only=True)["format"] == CHECKPOINT_FORMAT
    preds = tmp_path / "preds.csv"
    assert main(["predict", "--checkpoint", str(run / "model.pt"), "--data", "digits", "--out", str(preds)]) == 0
    predicted = [int(line.split(",")[1]) for line in preds.read_text().splitlines()[1:]]
    assigned = [int(line.split(",")[1]) for line in (run / "assignments.csv").read_text().splitlines()[1:]]
    assert predicted == assigned
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1

"""Which network made the features: a run fitted behind a pretrained backbone is resumed,
evaluated and predicted only with that network's embeddings (its weights compared by sha256,
not by path), and each command says in one line which network it found and which it expected."""

import numpy as np
import pytest
import torch

from otclust.cli import main

TIMM = "timm:test_vit"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("otclust: error")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def fit_args(data, weights, out, *extra, backbone=TIMM, epochs=1):
    return ["fit", "--data", data, "--backbone", backbone, "--weights", str(weights), "--clusters", "3", "--epochs", str(epochs), "--batch-size", "40", "--out", str(out), "--no-progress", "--device", "cpu", *extra]


@pytest.fixture
def other_weights(random_weights, tmp_path):
    """test_vit's weights with one tensor changed: the same network shape, another network."""
    state = torch.load(random_weights[TIMM], weights_only=True)
    state["cls_token"] = state["cls_token"] + 1.0
    path = tmp_path / "other.pt"
    torch.save(state, path)
    return path


def test_resume_with_another_weights_file_is_refused_and_a_moved_copy_resumes(blob_image_folder, random_weights, offline_caches, tmp_path, other_weights, capsys):
    """It resumed: the head trained on one network's embeddings went on on another's, and the
    run's config.yaml and model.pt then named only the second file."""
    data, out = f"folder:{blob_image_folder}", tmp_path / "run"
    assert main(fit_args(data, random_weights[TIMM], out)) == 0
    model, config = (out / "model.pt").read_bytes(), (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main(fit_args(data, other_weights, out, "--resume", epochs=2)) == 2
    error = one_line_error(capsys)
    assert "cannot resume: the checkpoint was trained with weights sha256" in error and str(random_weights[TIMM]) in error and "--weights" in error
    assert (out / "model.pt").read_bytes() == model and (out / "config.yaml").read_text() == config
    # The same bytes under another name are the same network: the run resumes.
    copy = tmp_path / "elsewhere" / "copy.pt"
    copy.parent.mkdir()
    copy.write_bytes(random_weights[TIMM].read_bytes())
    assert main(fit_args(data, copy, out, "--resume", epochs=2)) == 0

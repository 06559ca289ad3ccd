"""Which network made the features: a run fitted behind a pretrained backbone is resumed,
evaluated and predicted only with that network's embeddings (its weights compared by sha256,
not by path), and each command says in one line which network it found and which it expected."""

import numpy as np
import pytest
import torch

from otclust.cli import main
from otclust.models.pretrained import file_sha256

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


@pytest.fixture
def two_otclust_models(blob_images, tmp_path):
    """Two small otclust models trained on images (seeds 0 and 1): two different frozen backbones."""
    from otclust import OTClust

    images, _ = blob_images
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"run{seed}" / "model.pt"
        path.parent.mkdir()
        OTClust(n_clusters=3, epochs=1, batch_size=40, device="cpu", seed=seed).fit(images).save(path)
        paths.append(path)
    return paths


def test_an_otclust_backbone_and_another_model_as_weights_are_refused(blob_image_folder, offline_caches, tmp_path, two_otclust_models, capsys):
    """--weights won: the data were embedded by B while FILE.json, the cache and the run named A."""
    from otclust import OTClust
    from otclust.errors import UserError

    a, b = two_otclust_models
    data = f"folder:{blob_image_folder}"
    embed = ["embed", "--data", data, "--backbone", f"otclust:{a.parent}", "--no-progress", "--device", "cpu"]
    assert main([*embed, "--weights", str(b), "--out", str(tmp_path / "ab.npy")]) == 2
    error = one_line_error(capsys)
    assert f"--backbone otclust:{a.parent} and --weights {b} are not the same model" in error
    assert not (tmp_path / "ab.npy").exists()
    assert main(fit_args(data, b, tmp_path / "run", backbone=f"otclust:{a}")) == 2
    assert "are not the same model" in one_line_error(capsys)
    with pytest.raises(UserError, match="are not the same model"):
        OTClust(n_clusters=3, epochs=1, device="cpu", backbone=f"otclust:{a}", weights=str(b)).fit(np.zeros((6, 8, 8), np.uint8))
    # The same model named twice (a run's config.yaml records both), or a copy of it, is that model.
    copy = tmp_path / "copy.pt"
    copy.write_bytes(a.read_bytes())
    assert main([*embed, "--weights", str(copy)]) == 0
    assert main(fit_args(data, a, tmp_path / "run", backbone=f"otclust:{a.parent}")) == 0


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_moved_weights_file_is_asked_for_with_weights_by_predict_and_evaluate(command, blob_image_folder, random_weights, offline_caches, tmp_path, capsys):
    """evaluate had no --weights (after the file moved it could not run at all), and predict's
    'weights file not found' did not say that --weights passes it."""
    data, weights = f"folder:{blob_image_folder}", tmp_path / "w.pt"
    weights.write_bytes(random_weights[TIMM].read_bytes())
    assert main(fit_args(data, weights, tmp_path / "run")) == 0
    weights.rename(tmp_path / "moved.pt")
    capsys.readouterr()
    args = [command, "--checkpoint", str(tmp_path / "run"), "--data", data, "--out", str(tmp_path / f"{command}.out"), "--device", "cpu", "--no-progress"]
    assert main(args) == 2
    error = one_line_error(capsys)
    assert f"weights file not found: {weights}" in error and "pass it with --weights PATH (sha256 " in error
    assert main([*args, "--weights", str(tmp_path / "moved.pt")]) == 0


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_weights_for_a_model_without_a_pretrained_backbone_are_refused(command, tmp_path, capsys):
    """predict took --weights and ignored it (fit refuses the combination)."""
    features = tmp_path / "x.npy"
    rng = np.random.default_rng(0)
    np.save(features, np.concatenate([rng.normal(0, 1, (30, 4)), rng.normal(6, 1, (30, 4))]).astype(np.float32))
    np.save(tmp_path / "x.labels.npy", np.repeat([0, 1], 30))
    fit = ["fit", "--data", f"features:{features}", "--clusters", "2", "--epochs", "1", "--batch-size", "20", "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]
    assert main(fit) == 0
    capsys.readouterr()
    args = [command, "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / f"{command}.out"), "--device", "cpu", "--no-progress"]
    assert main([*args, "--weights", str(tmp_path / "x.npy")]) == 2
    assert "--weights is for a model fitted behind a pretrained backbone" in one_line_error(capsys)
    assert not (tmp_path / f"{command}.out").exists()
    assert main(args) == 0


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_features_embedded_by_another_network_are_refused_by_their_json(command, blob_image_folder, random_weights, offline_caches, tmp_path, other_weights, capsys):
    """Embeddings of another network with the same dimension were clustered without a word
    (ACC at chance, exit 0), although E.json beside them named that network."""
    data = f"folder:{blob_image_folder}"
    assert main(fit_args(data, random_weights[TIMM], tmp_path / "run")) == 0
    embed = ["embed", "--data", data, "--backbone", TIMM, "--no-progress", "--device", "cpu", "--neighbors", "0"]
    assert main([*embed, "--weights", str(other_weights), "--out", str(tmp_path / "other.npy")]) == 0
    assert main([*embed, "--weights", str(random_weights[TIMM]), "--out", str(tmp_path / "same.npy")]) == 0
    capsys.readouterr()
    args = [command, "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / f"{command}.out"), "--device", "cpu", "--no-progress", "--overwrite"]
    assert main([*args, "--data", f"features:{tmp_path / 'other.npy'}"]) == 2
    error = one_line_error(capsys)
    found, expected = file_sha256(other_weights)[:12], file_sha256(random_weights[TIMM])[:12]
    assert f"was embedded by {TIMM} (weights sha256 {found}..., per other.json), but the model was fitted behind {TIMM} (weights sha256 {expected}...)" in error
    assert not (tmp_path / f"{command}.out").exists()
    # The model's own network: taken. Without a JSON nothing can be checked: taken, with a note.
    assert main([*args, "--data", f"features:{tmp_path / 'same.npy'}"]) == 0
    assert "no same.json" not in capsys.readouterr().out
    # --weights beside embeddings: nothing is embedded, so it was silently unused.
    assert main([*args, "--data", f"features:{tmp_path / 'same.npy'}", "--weights", str(random_weights[TIMM])]) == 2
    assert "holds embeddings already: drop --weights" in one_line_error(capsys)
    (tmp_path / "other.json").unlink()
    assert main([*args, "--data", f"features:{tmp_path / 'other.npy'}"]) == 0
    assert f"note: no other.json of otclust embed beside the features: nothing says which network made them; the model expects embeddings by {TIMM}" in capsys.readouterr().out

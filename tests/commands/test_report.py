"""otclust report / fit --report: every figure is a valid PNG the page shows; missing labels,
images or data leave parts out with a note instead of failing."""

import re

import numpy as np
import pytest
from PIL import Image

from otclust.cli import main


def check_page(run):
    """Every PNG of figures/ is valid and linked from report.html; returns the figure names."""
    page = (run / "report.html").read_text()
    names = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert names
    for name in names:
        with Image.open(run / "figures" / name) as image:
            image.verify()
            assert image.format == "PNG"
        assert f'href="figures/{name}"' in page
    # Embedded too, so the page works on its own: one data URI per figure.
    assert len(re.findall(r'src="data:image/png;base64,', page)) == len(names)
    return names


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, blob_image_folder):
    root = tmp_path_factory.mktemp("report")
    data = blob_image_folder
    out = root / "run"
    args = ["fit", "--data", f"folder:{data}", "--clusters", "3", "--epochs", "2", "--batch-size", "40", "--out", str(out), "--no-progress", "--report", "--device", "cpu"]
    assert main(args) == 0
    return out


def test_fit_report_writes_every_figure_and_the_page_shows_them(image_run):
    names = check_page(image_run)
    for name in ("curves.png", "confusion.png", "tsne.png", "sizes.png"):
        assert name in names
    clusters = np.loadtxt(image_run / "assignments.csv", delimiter=",", skiprows=1, usecols=2, dtype=int)
    grids = [n for n in names if n.startswith("cluster_")]
    assert grids == [f"cluster_{c:02d}.png" for c in sorted(set(clusters))]
    page = (image_run / "report.html").read_text()
    assert "ACC" in page and "clot" in page
    assert "no labels" not in page


def test_report_command_refuses_to_overwrite_without_the_flag(image_run, capsys):
    assert main(["report", str(image_run)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["report", str(image_run), "--overwrite", "--images", "3", "--max-points", "50", "--device", "cpu"]) == 0
    check_page(image_run)
    assert "50 of 120 samples" in (image_run / "report.html").read_text()


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    # A compare folder: point at its own tables and at one of its runs.
    (tmp_path / "comparison.md").write_text("# Comparison\n")
    (tmp_path / "clot" / "seed0").mkdir(parents=True)
    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "comparison.md" in error and str(tmp_path / "clot" / "seed0") in error and len(error.strip().splitlines()) == 1
    assert main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "model.pt").write_bytes(b"")  # the checkpoint given instead of its run folder
    assert main(["report", str(tmp_path / "model.pt")]) == 2
    assert f"is a file, not a run folder: pass its folder, {tmp_path}" in capsys.readouterr().err


def test_report_of_a_run_whose_config_is_not_utf8(tmp_path, capsys):
    (tmp_path / "config.yaml").write_bytes(b"\xff\xfemethod: clot\n")
    assert main(["report", str(tmp_path)]) == 2  # was a UnicodeDecodeError's traceback
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "is not valid YAML" in error


def test_unlabeled_features_leave_out_label_parts_and_image_grids_with_notes(tmp_path):
    features = np.concatenate([np.random.default_rng(1).normal(c * 4, 1, size=(30, 4)) for c in range(3)]).astype(np.float32)
    np.save(tmp_path / "x.npy", features)
    out = tmp_path / "run"
    assert main(["fit", "--data", f"features:{tmp_path / 'x.npy'}", "--clusters", "3", "--epochs", "1", "--batch-size", "30", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert main(["report", str(out), "--device", "cpu"]) == 0
    names = check_page(out)
    assert names == ["curves.png", "sizes.png", "tsne.png"]
    page = (out / "report.html").read_text()
    assert "no labels: the confusion matrix is left out" in page
    assert "feature vectors, not images: no image grids" in page

    # Samples added since the fit: said on the page and the console.
    np.save(tmp_path / "x.npy", np.concatenate([features, features[:5]]))
    assert main(["report", str(out), "--overwrite", "--device", "cpu"]) == 0
    assert "data now hold 95 samples, and it was fitted on 90" in (out / "report.html").read_text()
    np.save(tmp_path / "x.npy", features)

    # The data moved away: what can be drawn from the run folder alone still is.
    (tmp_path / "x.npy").rename(tmp_path / "moved.npy")
    assert main(["report", str(out), "--overwrite", "--device", "cpu"]) == 0
    assert check_page(out) == ["curves.png", "sizes.png"]
    assert "could not be loaded again" in (out / "report.html").read_text()


def test_a_damaged_run_folder_still_reports_and_says_what_it_left_out(tmp_path, capsys):
    """A device this machine lacks is refused (exit 2, no figures/ made); a damaged metrics.json,
    an assignments.csv without its columns and a missing model leave parts out, said on the
    console as on the page."""
    import torch

    features = np.concatenate([np.random.default_rng(2).normal(c * 4, 1, size=(30, 4)) for c in range(3)]).astype(np.float32)
    np.save(tmp_path / "x.npy", features)
    out = tmp_path / "run"
    assert main(["fit", "--data", f"features:{tmp_path / 'x.npy'}", "--clusters", "3", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    if not torch.cuda.is_available():
        assert main(["report", str(out), "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err and not (out / "figures").exists()
    (out / "metrics.json").write_text("[1, 2")
    (out / "model.pt").unlink()
    (out / "assignments.csv").write_text("index,group\n0,1\n")
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    page = (out / "report.html").read_text()
    for note in ("metrics.json could not be read", "no model.pt: the map and the image grids are left out"):
        assert note in page and f"report: note: {note}" in err


def test_the_size_figure_under_auto_shows_the_sizes_clot_trained_towards():
    """CLOT's `auto` sizes come from its features (feature_sizes), not from its running predicted
    masses: the report's prior must be the former, as predict --assign balanced uses."""
    import torch

    from otclust.methods.base import InputSpec
    from otclust.methods.clot import Clot, ClotParams
    from otclust.report import _prior

    spec = InputSpec(n_samples=64, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = Clot(3, spec, ClotParams())
    method.set_cluster_prior("auto", None)
    method.predicted_mass.copy_(torch.tensor([0.2, 0.5, 0.3]))
    method.feature_sizes.copy_(torch.tensor([0.7, 0.2, 0.1]))
    sizes, label = _prior(method, None, 3)
    np.testing.assert_allclose(sizes, [0.1, 0.7, 0.2], atol=1e-6)  # the largest estimate on the fullest cluster
    assert label.startswith("prior: auto")


def test_report_of_a_run_behind_a_pretrained_backbone_embeds_the_images_again(blob_image_folder, random_weights, offline_caches, tmp_path, monkeypatch, capsys):
    """The report loaded the images but never ran them through the backbone, so it left out the
    map and the grids of every such run, with a note that the data no longer matched the model."""
    import otclust.data.embeddings as embeddings_module

    weights = tmp_path / "w.pt"
    weights.write_bytes(random_weights["timm:test_vit"].read_bytes())
    run = tmp_path / "run"
    assert main(["fit", "--data", f"folder:{blob_image_folder}", "--backbone", "timm:test_vit", "--weights", str(weights), "--clusters", "3", "--epochs", "1",
                 "--batch-size", "40", "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    embedded = []
    real = embeddings_module.embed_images
    monkeypatch.setattr(embeddings_module, "embed_images", lambda extractor, data, *a, **k: embedded.append(len(data)) or real(extractor, data, *a, **k))
    capsys.readouterr()
    assert main(["report", str(run), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "note" not in err and embedded == [], "the embeddings fit cached are read, not computed again"
    names = check_page(run)
    clusters = np.loadtxt(run / "assignments.csv", delimiter=",", skiprows=1, usecols=2, dtype=int)
    assert "tsne.png" in names and [n for n in names if n.startswith("cluster_")] == [f"cluster_{c:02d}.png" for c in sorted(set(clusters))]
    # The weights file gone: the note says so (it said the data no longer matched the model).
    weights.unlink()
    assert main(["report", str(run), "--overwrite", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"report: note: the run's backbone timm:test_vit could not embed the images again (weights file not found: {weights})" in err
    assert "no longer matches" not in err and "tsne.png" not in check_page(run)


def test_report_takes_a_moved_weights_file_and_refuses_weights_for_a_run_without_a_backbone(blob_image_folder, random_weights, offline_caches, tmp_path, capsys):
    """After the weights file moved, the report could only say so (predict and evaluate take
    --weights); --weights for a run trained without a pretrained backbone would be ignored."""
    weights = tmp_path / "w.pt"
    weights.write_bytes(random_weights["timm:test_vit"].read_bytes())
    run = tmp_path / "run"
    assert main(["fit", "--data", f"folder:{blob_image_folder}", "--backbone", "timm:test_vit", "--weights", str(weights), "--clusters", "3", "--epochs", "1",
                 "--batch-size", "40", "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    moved = weights.rename(tmp_path / "moved.pt")
    assert main(["report", str(run), "--device", "cpu", "--weights", str(moved)]) == 0
    assert "tsne.png" in check_page(run) and "could not embed" not in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert main(["fit", "--data", f"folder:{blob_image_folder}", "--clusters", "3", "--epochs", "1", "--batch-size", "40", "--out", str(plain), "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["report", str(plain), "--device", "cpu", "--weights", str(moved)]) == 2
    err = capsys.readouterr().err
    assert "--weights is for a run fitted behind a pretrained backbone" in err and "drop --weights" in err and not (plain / "report.html").exists()

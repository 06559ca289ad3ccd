"""benchmarks/feature_probe.py: the nuisances it replays line up with the files, and its probe
tells a factor the features encode from one they do not."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import feature_probe as fp  # noqa: E402
import suite_data as sd  # noqa: E402

from otclust.data import load_dataset  # noqa: E402


def test_recording_the_scene_draws_the_same_photo():
    scene: dict = {}
    image, label = sd.draw_shape_photo(4, 7, (64, 48), scene=scene)
    again, same_label = sd.draw_shape_photo(4, 7, (64, 48))
    np.testing.assert_array_equal(image, again)
    assert label == same_label
    assert scene["background"] in sd.BACKGROUNDS and 0.15 <= scene["background_contrast"] <= 0.5
    assert 0.15 <= scene["radius"] <= 0.35 and len(scene["colour"]) == 3


def test_equal_count_bins_split_evenly():
    bins = fp.equal_count_bins(np.random.default_rng(0).normal(size=300), 3)
    np.testing.assert_array_equal(np.bincount(bins), [100, 100, 100])


@pytest.fixture(scope="module")
def shape_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    shapes = sd.build("shapes", root, n=60, size=(64, 48), seed=3)
    folder = Path(shapes.data.split(":", 1)[1])
    return folder, load_dataset(shapes.data, image_size=16)


def test_probe_finds_the_factor_the_features_encode(shape_folder):
    folder, data = shape_folder
    factors = fp.shape_scene_factors(folder, data.paths)
    # Features that hold the background's kind (read off each file's own scene) and nothing else:
    # if the replayed factors were misaligned with the files, the probe would not find it.
    kinds = list(sd.BACKGROUNDS)
    features = np.zeros((len(data.paths), len(kinds)))
    for row, path in enumerate(data.paths):
        scene: dict = {}
        sd.draw_shape_photo(3, int(Path(path).stem), (64, 48), scene=scene)
        features[row, kinds.index(scene["background"])] = 1.0
    features += np.random.default_rng(0).normal(0, 0.05, features.shape)
    clusters = factors["background kind (5)"]
    rows = dict(fp.factor_rows(features, clusters, clusters, {"labels": data.labels, **factors}))
    probe, majority, nmi_clusters, _ = rows["background kind (5)"]
    assert probe > 0.95 and nmi_clusters == pytest.approx(1.0)
    label_probe, label_majority, _, _ = rows["labels"]
    assert label_probe < 0.5  # six shapes, balanced: chance is 1/6


def test_probe_runs_on_a_trained_run(shape_folder, tmp_path, capsys, monkeypatch):
    from otclust.cli import main as otclust_main

    folder, _ = shape_folder
    run = tmp_path / "run"
    assert otclust_main(["fit", "--data", f"folder:{folder}", "--clusters", "6", "--image-size", "16", "--epochs", "1",
                         "--out", str(run), "--no-progress", "--readout", "head"]) == 0
    monkeypatch.setattr(sys, "argv", ["feature_probe.py", "--run", str(run), "--threads", "1"])
    capsys.readouterr()
    fp.main()
    table = capsys.readouterr().out
    for factor in ("labels (the classes)", "image brightness", "background kind", "background contrast", "object hue", "object value", "object size"):
        assert f"| {factor}" in table

"""The read-out stage: fitted after training to any method, saved in the checkpoint, named in the metrics."""

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from otclust.config import FitConfig
from otclust.engine import Trainer, load_trained
from otclust.errors import UserError
from otclust.methods import available_methods, get_method_class
from otclust.methods.base import InputSpec
from otclust.methods.clot import Clot, ClotParams
from otclust.readout import ReadoutParams, fit_linear_readout, resolve_readout
from otclust.runs import prepare_output_folder


def quiet(_message):
    pass


def _fit(dataset, out_dir=None, **settings):
    config = FitConfig(**{"method": "clot", "clusters": 3, "epochs": 4, "batch_size": 60, "lr": 3e-3, "seed": 0, "eval_every": 4, **settings})
    out = prepare_output_folder(out_dir) if out_dir is not None else None
    return Trainer(config, out_dir=out, progress=False, log=quiet).fit(dataset)


def _unit_features(method, data):
    method.eval()
    with torch.no_grad():
        return torch.nn.functional.normalize(method.embed(method.standardize(data)), dim=1)


def test_kmeans_readout_assigns_to_the_nearest_feature_center(blobs, tmp_path):
    result = _fit(blobs, tmp_path / "run", readout="kmeans")
    unit = _unit_features(result.method, blobs.data)
    centers = KMeans(3, n_init=50, random_state=0).fit(unit.double().numpy()).cluster_centers_
    nearest = torch.cdist(unit.double(), torch.from_numpy(centers)).argmin(dim=1).numpy()
    assert adjusted_rand_score(nearest, result.labels) == 1.0  # the same partition, up to cluster names
    assert result.metrics["predictor"] == "kmeans" and result.metrics["readout"]["name"] == "kmeans"
    reloaded, _ = load_trained(tmp_path / "run" / "model.pt", device="cpu")
    np.testing.assert_array_equal(reloaded.predict_proba(blobs.data).argmax(1).numpy(), result.labels)


def test_smoothed_readout_reads_out_the_clusters_of_neighbour_smoothed_features(blobs, tmp_path):
    """k-means on the smoothed features (recomputed here with a dense walk matrix), then a linear
    read-out of each image's own features predicts those clusters."""
    from sklearn.neighbors import NearestNeighbors

    result = _fit(blobs, tmp_path / "run", readout_params={"neighbors": 5, "rounds": 3})
    assert result.metrics["predictor"] == "smoothed"  # CLOT's default
    x = _unit_features(result.method, blobs.data).double().numpy()
    neighbours = NearestNeighbors(n_neighbors=6, metric="cosine", algorithm="brute").fit(x).kneighbors(x, return_distance=False)[:, 1:]
    walk = np.zeros((len(x), len(x)))
    np.put_along_axis(walk, neighbours, 1 / 5, axis=1)
    smoothed = np.linalg.matrix_power(0.5 * np.eye(len(x)) + 0.5 * walk, 3) @ x
    smoothed /= np.linalg.norm(smoothed, axis=1, keepdims=True)
    clusters = KMeans(3, n_init=50, random_state=0).fit_predict(smoothed)
    assert adjusted_rand_score(clusters, result.labels) > 0.95  # the same partition, up to cluster names
    reloaded, _ = load_trained(tmp_path / "run" / "model.pt", device="cpu")
    np.testing.assert_array_equal(reloaded.predict_proba(blobs.data).argmax(1).numpy(), result.labels)


@pytest.mark.parametrize("n_clusters, present", [(2, [0, 1]), (4, [0, 1, 3])])
def test_linear_readout_predicts_the_labels_it_was_fitted_to(n_clusters, present):
    g = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(n_clusters, 5, generator=g)
    labels = np.repeat(present, 20)
    features = centers[labels] + torch.randn(len(labels), 5, generator=g)
    weight, bias = fit_linear_readout(features, labels, n_clusters, seed=0)
    assert weight.shape == (n_clusters, 5) and bias.shape == (n_clusters,)
    np.testing.assert_array_equal((features @ weight.T + bias).argmax(1).numpy(), labels)  # an empty cluster never wins


def test_linear_readout_of_a_single_cluster_predicts_it_everywhere():
    features = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    weight, bias = fit_linear_readout(features, np.full(30, 2), n_clusters=4, seed=0)
    assert set((features @ weight.T + bias).argmax(1).tolist()) == {2}


def _spy_on_restart_choice(monkeypatch) -> dict:
    """The arguments of the read-out's last choose_kmeans_restart call, which still runs."""
    import otclust.readout.stage as stage

    seen = {}
    real = stage.choose_kmeans_restart

    def spy(points, n_clusters, seed, restarts, choice="prior", sizes=None, start_labels=None, min_excess=0.0):
        seen.update(sizes=sizes, choice=choice, start=start_labels, min_excess=min_excess)
        return real(points, n_clusters, seed, restarts, choice, sizes, start_labels, min_excess)

    monkeypatch.setattr(stage, "choose_kmeans_restart", spy)
    return seen


@pytest.mark.parametrize("proportions", ["uniform", "0.5,0.3,0.2", "auto"])
def test_readout_chooses_its_restart_under_the_runs_size_prior(blobs, proportions, monkeypatch):
    seen = _spy_on_restart_choice(monkeypatch)
    _fit(blobs, epochs=1, cluster_proportions=proportions)
    if proportions == "uniform":  # equal sizes imposed
        assert seen["sizes"] is None and seen["choice"] == "prior"
    elif proportions == "auto":  # sizes unknown: equal ones unless they cost too much (equal_size_excess)
        assert seen["sizes"] is None and seen["choice"] == "unknown" and seen["min_excess"] == ReadoutParams().auto_min_excess
    else:  # the known multiset; the read-out matches it to each restart's clusters
        torch.testing.assert_close(torch.sort(seen["sizes"]).values, torch.tensor([0.2, 0.3, 0.5]))
        assert seen["choice"] == "prior"


def test_every_trained_method_reads_out_smoothed_by_default_and_the_baseline_by_its_centres():
    for name in available_methods():
        expected = "head" if name == "kmeans" else "smoothed"
        assert get_method_class(name).default_readout == expected, name


@pytest.mark.parametrize("method", ["sela", "deepcluster"])
def test_a_default_run_predicts_by_the_readout_and_scores_the_head_beside_it(blobs, tmp_path, method):
    params = {"pca_dim": 4} if method == "deepcluster" else {}
    _fit(blobs, tmp_path / "run", method=method, epochs=1, batch_size=40, params=params)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["predictor"] == "smoothed" and metrics["acc"] == metrics["readout"]["acc"]
    assert {"acc", "nmi", "ari"} <= set(metrics["head"])


@pytest.mark.parametrize("method", ["sela", "deepcluster"])
def test_any_method_is_scored_by_its_head_and_the_shared_readout(blobs, tmp_path, method):
    """A method told to predict by its head (--readout head) keeps its head's predictions and also
    gets the smoothed read-out of the same network, scored in metrics.json and saved for
    predict --readout smoothed."""
    params = {"pca_dim": 4} if method == "deepcluster" else {}
    result = _fit(blobs, tmp_path / "run", method=method, epochs=1, batch_size=40, params=params, readout="head")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["predictor"] == "head"
    assert metrics["acc"] == metrics["head"]["acc"] and metrics["readout"]["name"] == "smoothed"
    head, _ = load_trained(tmp_path / "run" / "model.pt", device="cpu")
    np.testing.assert_array_equal(head.predict_proba(blobs.data).argmax(1).numpy(), result.labels)
    smoothed, _ = load_trained(tmp_path / "run" / "model.pt", device="cpu", predictor="smoothed")
    from otclust.metrics import evaluate_clustering

    scores = evaluate_clustering(blobs.labels, smoothed.predict_proba(blobs.data).argmax(1).numpy())
    assert scores["acc"] == pytest.approx(metrics["readout"]["acc"])
    with pytest.raises(UserError, match="no fitted 'kmeans' read-out"):
        load_trained(tmp_path / "run" / "model.pt", device="cpu", predictor="kmeans")


def test_metrics_name_the_predictor_of_every_score(blobs, tmp_path):
    result = _fit(blobs, tmp_path / "run", epochs=2, eval_every=1)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["predictor"] == "head" for row in rows)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["predictor"] == "smoothed" and metrics["readout"]["name"] == "smoothed"
    assert {"acc", "nmi", "ari"} <= set(metrics["head"]) and {"acc", "nmi", "ari"} <= set(metrics["readout"])
    assert metrics["acc"] == metrics["readout"]["acc"]
    assert metrics["head"]["acc"] == pytest.approx(rows[-1]["acc"], abs=1e-4)  # the same network, the same head
    assert result.metrics == metrics


def test_without_labels_a_head_predicting_run_fits_no_second_readout(blob_images):
    from otclust.estimator import dataset_from_array

    result = _fit(dataset_from_array(blob_images[0]), method="sela", epochs=1, batch_size=40, readout="head")
    assert result.method.readout_fits == {} and result.metrics["predictor"] == "head" and "readout" not in result.metrics


def test_fit_table_names_the_predictor_of_each_row():
    from otclust.commands.fit import format_metrics_table

    metrics = {"method": "clot", "data": "digits", "clusters": 10, "seconds": 1.0, "predictor": "smoothed", "acc": 0.9, "nmi": 0.8, "ari": 0.7,
               "head": {"acc": 0.5, "nmi": 0.4, "ari": 0.3}, "readout": {"name": "smoothed", "acc": 0.9, "nmi": 0.8, "ari": 0.7}}
    lines = format_metrics_table(metrics).splitlines()
    assert "| predictor |" in lines[0]
    assert lines[2].startswith("| clot | digits | 10 | smoothed (used) | 0.9000 |") and lines[3].startswith("| clot | digits | 10 | head | 0.5000 |")


@pytest.mark.parametrize(
    "old, name, values",
    [
        ({"predict_by": "head"}, "head", {}),
        ({"predict_by": "kmeans", "smooth_rounds": 0}, "kmeans", {"rounds": 0}),
        ({"predict_by": "auto"}, "smoothed", {}),
        ({"smooth_neighbors": 7, "kmeans_restarts": 9, "kmeans_choice": "inertia"}, "smoothed", {"neighbors": 7, "restarts": 9, "choice": "inertia"}),
    ],
)
def test_deprecated_clot_readout_parameters_still_work_with_a_warning(old, name, values):
    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = Clot(2, spec, ClotParams(**old))
    with pytest.warns(FutureWarning, match="deprecated"):
        resolved, params = resolve_readout(FitConfig(method="clot", params=old), method)
    assert resolved == name
    for key, value in values.items():
        assert getattr(params, key) == value
    with pytest.warns(FutureWarning):
        assert resolve_readout(FitConfig(method="clot", params=old, readout="head"), method)[0] == "head"  # --readout wins


def test_clot_without_deprecated_parameters_warns_nothing():
    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_readout(FitConfig(method="clot"), Clot(2, spec, ClotParams()))[0] == "smoothed"


@pytest.mark.parametrize("head_start", [False, True])
def test_the_heads_clusters_of_the_training_set_start_one_kmeans_run_when_asked(blobs, head_start, monkeypatch):
    seen = _spy_on_restart_choice(monkeypatch)
    result = _fit(blobs, epochs=1, readout_params={"head_start": head_start})
    if not head_start:
        assert seen["start"] is None
    else:  # the training set is the evaluation set here: its head predictions, as scored
        method = result.method
        method.predictor = "head"
        with torch.no_grad():
            head = method.predict_proba(blobs.data).argmax(1).numpy()
        np.testing.assert_array_equal(seen["start"], head)


def test_an_unknown_predict_by_is_a_user_error():
    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    with pytest.warns(FutureWarning), pytest.raises(UserError, match="predict_by"):
        resolve_readout(FitConfig(method="clot"), Clot(2, spec, ClotParams(predict_by="centroids")))


@pytest.mark.parametrize("settings, name", [({"restarts": 0}, "restarts"), ({"choice": "lowest"}, "choice"), ({"rounds": -1}, "rounds"), ({"neighbors": 0}, "neighbors"), ({"typo": 1}, "typo"), ({"restarts": "many"}, "restarts"), ({"head_start": "yes"}, "head_start"), ({"auto_min_excess": -0.1}, "auto_min_excess"), ({"auto_min_excess": True}, "auto_min_excess"), ({"restarts": 2.5}, "restarts")])
def test_bad_readout_settings_are_user_errors(settings, name):
    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    with pytest.raises(UserError, match=name):
        resolve_readout(FitConfig(readout_params=settings), Clot(2, spec, ClotParams()))


@pytest.mark.parametrize("value", [0.3, 2])
def test_a_number_setting_takes_a_fraction_or_a_whole_number(value):
    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    _, params = resolve_readout(FitConfig(readout_params={"auto_min_excess": value}), Clot(2, spec, ClotParams()))
    assert params.auto_min_excess == value


def test_unknown_readout_name_is_a_user_error(tmp_path, capsys):
    from otclust.cli import main

    with pytest.raises(UserError, match="--readout"):
        FitConfig(readout="centroids").validate()
    (tmp_path / "bad.yaml").write_text("method: clot\nreadout: centroids\n")
    assert main(["fit", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "--readout must be one of head, kmeans, smoothed" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_old_clot_checkpoints_predict_with_the_readout_in_their_weights(blobs, tmp_path):
    """Earlier versions kept the read-out in the model's weights (readout_weight/readout_bias,
    or feature_centers), had no per-head masses, and named it with predict_by."""
    result = _fit(blobs, tmp_path / "run", epochs=1)
    checkpoint = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    fit = checkpoint.pop("readout")["fits"]["smoothed"]
    checkpoint["model"]["readout_weight"], checkpoint["model"]["readout_bias"] = fit["weight"], fit["bias"]
    del checkpoint["model"]["head_mass"]
    checkpoint["config"]["params"] = {"predict_by": "kmeans"}
    for key in ("readout", "readout_params"):
        checkpoint["config"].pop(key)
    torch.save(checkpoint, tmp_path / "old.pt")
    old, _ = load_trained(tmp_path / "old.pt", device="cpu")
    assert old.predictor == "smoothed"
    np.testing.assert_array_equal(old.predict_proba(blobs.data).argmax(1).numpy(), result.labels)
    torch.testing.assert_close(old.head_mass[0], old.predicted_mass)


def test_a_checkpoint_with_kmeans_centres_still_predicts_by_nearest_centre(blobs):
    method = Clot(3, InputSpec.from_dataset(blobs), ClotParams())
    state = method.state_dict()
    centers = torch.nn.functional.normalize(torch.randn(3, method.backbone.out_dim), dim=1)
    state["feature_centers"] = centers
    method.load_state_dict(state)
    assert method.predictor == "kmeans"
    unit = _unit_features(method, blobs.data)
    with torch.no_grad():
        predicted = method.predict_proba(blobs.data).argmax(1)
    torch.testing.assert_close(predicted, torch.cdist(unit, centers).argmin(dim=1))


def test_bad_readout_settings_fail_before_any_training(blobs, monkeypatch):
    trainer = Trainer(FitConfig(method="clot", clusters=3, epochs=1, batch_size=60, readout_params={"restarts": 0}), progress=False, log=quiet)
    monkeypatch.setattr(trainer, "_train_one_epoch", lambda *args: pytest.fail("trained before checking the read-out settings"))
    with pytest.raises(UserError, match="restarts"):
        trainer.fit(blobs)


def test_another_methods_parameter_of_a_deprecated_name_is_its_own(blobs, recwarn):
    """OT k-means' kmeans_restarts (its own k-means) is not CLOT's old read-out setting."""
    config = FitConfig(method="ot-kmeans", clusters=3, params={"kmeans_restarts": 3})
    method = get_method_class("ot-kmeans")(3, InputSpec.from_dataset(blobs), get_method_class("ot-kmeans").Params(kmeans_restarts=3))
    assert resolve_readout(config, method) == ("smoothed", resolve_readout(FitConfig(), method)[1])
    assert resolve_readout(config, method)[1].restarts == 50
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]

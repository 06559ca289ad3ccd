import re

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from otclust import OTClust, OTClustWarning
from otclust.errors import UserError
from otclust.estimator import SKLEARN_CHECKS_NOT_APPLICABLE, InputValueError, dataset_from_array


def test_fit_predict_save_load(tmp_path, blob_images):
    images, labels = blob_images
    model = OTClust(n_clusters=3, epochs=2, batch_size=60, seed=0)
    assigned = model.fit_predict(images)
    assert assigned.shape == (120,) and set(np.unique(assigned)) <= {0, 1, 2}
    np.testing.assert_array_equal(model.predict(images), assigned)
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = OTClust.load(path, device="cpu")
    np.testing.assert_array_equal(loaded.predict(images), assigned)
    np.testing.assert_array_equal(loaded.labels_, assigned)
    # New images of another size and colour mode are converted as the training data were, with a warning.
    rgb = np.repeat(np.kron(images[:5], np.ones((2, 2), dtype=np.uint8))[..., None], 3, axis=-1)
    with pytest.warns(OTClustWarning) as record:
        assert loaded.predict(rgb).shape == (5,)
    assert [str(w.message) for w in record] == ["converted RGB images to grayscale to match the model", "resized images from 16x16 to 8x8 to match the model"]


def test_array_layouts():
    assert tuple(dataset_from_array(np.zeros((4, 8, 8))).data.shape) == (4, 1, 8, 8)
    assert tuple(dataset_from_array(np.zeros((4, 8, 8, 3))).data.shape) == (4, 3, 8, 8)
    assert tuple(dataset_from_array(np.zeros((4, 3, 8, 8))).data.shape) == (4, 3, 8, 8)
    floats = dataset_from_array(np.full((2, 4, 4), 0.5))
    assert int(floats.data.max()) == 128
    assert dataset_from_array(np.zeros((4, 6))).is_features


def test_feature_vectors_are_used_as_given():
    # Standardised features (negative values, values above 1) must reach the model unchanged.
    features = np.random.default_rng(0).standard_normal((20, 5)) * 3
    data = dataset_from_array(features).data.numpy()
    np.testing.assert_allclose(data, features.astype(np.float32))


def test_image_value_ranges():
    rng = np.random.default_rng(0)
    intensities = rng.random((3, 6, 6))
    np.testing.assert_array_equal(dataset_from_array(intensities).data.numpy()[:, 0], np.rint(intensities * 255).astype(np.uint8))
    bytes_as_float = rng.integers(0, 256, (3, 6, 6)).astype(np.float64)
    np.testing.assert_array_equal(dataset_from_array(bytes_as_float).data.numpy()[:, 0], bytes_as_float.astype(np.uint8))
    small_ints = rng.integers(0, 256, (3, 6, 6)).astype(np.int64)
    np.testing.assert_array_equal(dataset_from_array(small_ints).data.numpy()[:, 0], small_ints.astype(np.uint8))
    assert int(dataset_from_array(np.ones((2, 4, 4), dtype=bool)).data.max()) == 255


@pytest.mark.parametrize(
    "images",
    [
        np.random.default_rng(0).standard_normal((4, 6, 6)),  # standardised: negatives would be clipped away
        np.full((4, 6, 6), 1000.0),  # above 255: would be rescaled silently
        np.full((4, 6, 6), 4000, dtype=np.uint16),  # 16-bit
    ],
)
def test_images_out_of_range_are_refused_in_one_line(images):
    with pytest.raises(InputValueError, match=r"reshape\(len\(X\), -1\)") as error:
        dataset_from_array(images)
    assert isinstance(error.value, UserError) and isinstance(error.value, ValueError)
    assert "\n" not in str(error.value)


def test_bad_arrays_are_user_errors():
    with pytest.raises(UserError, match="NaN"):
        dataset_from_array(np.array([[np.nan, 1.0], [0.0, 1.0]]))
    with pytest.raises(UserError):
        dataset_from_array(np.zeros((4,)))
    with pytest.raises(NotFittedError, match="not fitted"):
        OTClust().predict(np.zeros((2, 8, 8)))
    with pytest.raises(InputValueError, match="n_samples=2"):
        OTClust(n_clusters=3, epochs=1).fit(np.zeros((2, 4)))


def test_predict_refuses_other_features_and_1d_input():
    model = OTClust(method="kmeans", n_clusters=2).fit(np.random.default_rng(0).standard_normal((12, 4)))
    assert model.n_features_in_ == 4
    with pytest.raises(ValueError, match="X has 3 features, but OTClust is expecting 4"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        model.predict(np.zeros(4))


# A real deep method (CLOT, one epoch, small batches) behind every scikit-learn estimator check;
# the few that do not apply are named with the reason in SKLEARN_CHECKS_NOT_APPLICABLE.
@parametrize_with_checks(
    [OTClust(method="clot", n_clusters=3, epochs=1, batch_size=16, device="cpu")],
    expected_failed_checks=lambda estimator: SKLEARN_CHECKS_NOT_APPLICABLE,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_estimator_training_length_is_epochs_steps_or_the_budget():
    assert (OTClust()._config().epochs, OTClust()._config().steps) == (None, None)  # the budget, fixed at fit
    assert (OTClust(steps=40)._config().epochs, OTClust(steps=40)._config().steps) == (None, 40)
    assert OTClust(epochs=3)._config().epochs == 3
    with pytest.raises(UserError, match="give one of epochs and steps"):
        OTClust(epochs=3, steps=40)._config()


def test_cpu_amp_reaches_the_training_and_is_refused_when_not_a_boolean(monkeypatch, blob_images):
    from otclust import precision

    monkeypatch.setattr(precision, "cpu_computes_bfloat16", lambda: True)  # emulated where not native
    images, labels = blob_images
    model = OTClust(n_clusters=3, epochs=2, batch_size=40, cpu_amp=True).fit(images)
    assert model.config_.cpu_amp is True and model.labels_.shape == (len(images),)
    with pytest.raises(UserError, match="cpu_amp must be true or false"):
        OTClust(n_clusters=3, epochs=1, cpu_amp="fast").fit(images)


def test_fit_leaves_the_callers_random_generators_as_they_were():
    """fit seeds Python's, numpy's and torch's generators for its own reproducibility; the
    caller's draws after fit are those they would have made without it (and the result is still
    the seed's)."""
    import random

    import torch

    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = draws()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    first = OTClust(n_clusters=2, epochs=1, seed=3).fit(x).labels_
    assert draws() == expected
    assert np.array_equal(OTClust(n_clusters=2, epochs=1, seed=3).fit(x).labels_, first)


def test_a_loaded_estimator_has_what_fit_left(tmp_path):
    """history_, k_selection_ and n_features_in_ survive save/load (they raised AttributeError)."""
    x = np.concatenate([np.random.default_rng(1).normal(c * 6, 1, size=(30, 5)) for c in range(3)]).astype(np.float32)
    model = OTClust(n_clusters="auto:2-4", epochs=1, refit=False).fit(x)
    model.save(tmp_path / "m.pt")
    loaded = OTClust.load(tmp_path / "m.pt", device="cpu")
    assert loaded.history_ == model.history_ and len(loaded.history_) == 1
    assert loaded.k_selection_ == model.k_selection_ and loaded.k_selection_["chosen"] == model.n_clusters_
    assert loaded.n_features_in_ == 5 and loaded.n_clusters_ == model.n_clusters_


@pytest.mark.parametrize("settings", [{"n_clusters": "auto:5-2"}, {"epochs": 0}, {"lr": 0.0}, {"params": {"nosuch": 1}}, {"cluster_proportions": "0.5,0.2"}])
def test_bad_settings_are_value_errors_as_in_scikit_learn(settings):
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    with pytest.raises(ValueError):
        OTClust(**{"n_clusters": 3, "epochs": 1, **settings}).fit(x)


@pytest.mark.parametrize("case", ["unknown-name", "garbage-file", "a-folder", "missing-otclust-run", "features-with-a-backbone", "not-in-the-cache"])
def test_pretrained_backbone_settings_are_value_errors_too(case, blob_images, random_weights, offline_caches, tmp_path):
    """They were plain UserErrors, which `except ValueError` missed, while `weights=` without a
    pretrained backbone already was a ValueError."""
    images = blob_images[0][:30]
    (tmp_path / "garbage.pth").write_bytes(b"not a state dict")
    (tmp_path / "adir.pth").mkdir()
    settings, data, message = {
        "unknown-name": ({"backbone": "timm:nope"}, images, "timm has no model 'nope'"),
        "garbage-file": ({"backbone": "timm:test_vit", "weights": str(tmp_path / "garbage.pth")}, images, "cannot read weights file"),
        "a-folder": ({"backbone": "timm:test_vit", "weights": str(tmp_path / "adir.pth")}, images, "is a folder"),
        "missing-otclust-run": ({"backbone": f"otclust:{tmp_path / 'nope'}"}, images, "no run folder or model.pt"),
        "features-with-a-backbone": ({"backbone": "timm:test_vit", "weights": str(random_weights["timm:test_vit"])}, images.reshape(30, -1).astype(np.float32), "holds feature vectors: drop backbone"),
        # OTClust has no download parameter: the option is named as the command line's.
        "not-in-the-cache": ({"backbone": "timm:test_vit"}, images, "pass weights=PATH, or the command line's --download to fetch them"),
    }[case]
    with pytest.raises(InputValueError, match=re.escape(message)):
        OTClust(n_clusters=3, epochs=1, device="cpu", **settings).fit(data)


def test_a_loaded_model_takes_its_moved_weights_file(blob_images, random_weights, offline_caches, tmp_path):
    """After the weights file moved, OTClust.load(path).predict(X) could not be given the new
    path (setting weights was ignored) and the error named --weights and --download."""
    images = blob_images[0]
    weights = tmp_path / "w.pt"
    weights.write_bytes(random_weights["timm:test_vit"].read_bytes())
    model = OTClust(n_clusters=3, epochs=1, batch_size=40, device="cpu", backbone="timm:test_vit", weights=str(weights)).fit(images)
    model.save(tmp_path / "m.pt")
    moved = weights.rename(tmp_path / "moved.pt")
    with pytest.raises(InputValueError, match=re.escape(f"the weights file of timm:test_vit this model was fitted with is not at {weights}: give its new path, OTClust.load(PATH, weights=NEW) or model.weights = NEW")):
        OTClust.load(tmp_path / "m.pt", device="cpu").predict(images)
    assert np.array_equal(OTClust.load(tmp_path / "m.pt", device="cpu", weights=moved).predict(images), model.labels_)
    loaded = OTClust.load(tmp_path / "m.pt", device="cpu")
    loaded.weights = str(moved)
    assert np.array_equal(loaded.predict(images), model.labels_)
    model.set_params(weights=str(moved))  # the fitted estimator itself too
    assert np.array_equal(model.predict(images), model.labels_)
    # Another file is still refused by its sha256, as a ValueError.
    other = tmp_path / "other.pt"
    state = torch.load(moved, weights_only=True)
    state["cls_token"] = state["cls_token"] + 1.0
    torch.save(state, other)
    with pytest.raises(InputValueError, match="is not the one this model was trained with"):
        OTClust.load(tmp_path / "m.pt", device="cpu", weights=other).predict(images)


def test_cluster_proportions_may_be_a_sequence_of_numbers():
    x = np.concatenate([np.random.default_rng(2).normal(c * 6, 1, size=(n, 4)) for c, n in enumerate((40, 20, 20))]).astype(np.float32)
    for sizes, text in (([0.5, 0.25, 0.25], "0.5,0.25,0.25"), ((2, 1, 1), "2.0,1.0,1.0"), (np.array([0.5, 0.25, 0.25]), "0.5,0.25,0.25")):
        model = OTClust(n_clusters=3, epochs=1, cluster_proportions=sizes).fit(x)
        assert model.config_.cluster_proportions == text
        assert model.get_params()["cluster_proportions"] is sizes  # the parameter itself is left as given


def test_float_images_almost_all_in_unit_range_are_refused_not_read_as_0_to_255():
    # One value just above 1 used to make the whole array 0..255, rounded to 0 and 1: 2 levels left.
    images = np.random.default_rng(0).random((40, 16, 16))
    images[0, 0, 0] = 1.0001
    with pytest.raises(InputValueError, match=r"np.clip\(X, 0, 1\).*astype\(np.uint8\)") as error:
        dataset_from_array(images)
    assert "\n" not in str(error.value)
    assert len(np.unique(dataset_from_array(np.clip(images, 0, 1)).data)) == 256
    assert len(np.unique(dataset_from_array(np.clip(images, 0, 1) * 255).data)) == 256  # 0..255 floats still read


def test_predict_reads_float_images_on_the_scale_fitted_and_kept_by_save(tmp_path, blob_images):
    images, _ = blob_images
    model = OTClust(n_clusters=3, epochs=1, batch_size=40, device="cpu").fit(images.astype(np.float64))
    assert model.float_image_range_ == "0..255"
    # A dark batch (all values <= 1) is still 0..255 values, not intensities to multiply by 255.
    dark = np.minimum(images[:6], 1).astype(np.float64)
    np.testing.assert_allclose(model.predict_proba(dark), model.predict_proba(dark.astype(np.uint8)))
    model.save(tmp_path / "model.pt")
    loaded = OTClust.load(tmp_path / "model.pt", device="cpu")
    assert loaded.float_image_range_ == "0..255"
    np.testing.assert_allclose(loaded.predict_proba(dark), model.predict_proba(dark.astype(np.uint8)))
    unit = OTClust(n_clusters=3, epochs=1, batch_size=40, device="cpu").fit(images / 255.0)
    assert unit.float_image_range_ == "0..1"
    with pytest.raises(InputValueError, match=r"fitted on float images in \[0, 1\].*divide 0..255 values by 255"):
        unit.predict(images[:4].astype(np.float64))


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.zeros((40, 0, 16), np.uint8), "dimension of size 0"),
        ([[1, 2], [3]] * 30, "ragged"),
        (np.random.default_rng(0).random((40, 6)) * 1e300, "beyond float32's range"),
    ],
)
def test_arrays_that_crashed_deep_in_libraries_are_refused_in_one_line(X, message):
    with pytest.raises(InputValueError, match=message) as error:
        OTClust(n_clusters=2, epochs=1, batch_size=16, device="cpu").fit(X)
    assert "\n" not in str(error.value)


def test_predict_refuses_a_zero_size_image_dimension(blob_images):
    images, _ = blob_images
    model = OTClust(n_clusters=3, epochs=1, batch_size=40, device="cpu").fit(images)
    with pytest.raises(InputValueError, match="dimension of size 0"):
        model.predict(np.zeros((3, 8, 0), np.uint8))


def test_big_endian_long_double_and_bfloat16_inputs_are_converted():
    import torch

    features = np.random.default_rng(0).standard_normal((20, 5))
    expected = features.astype(np.float32)
    for converted in (features.astype(">f8"), features.astype(np.longdouble), torch.tensor(features).bfloat16()):
        data = dataset_from_array(converted).data.numpy()
        np.testing.assert_allclose(data, expected, rtol=1e-2)  # bfloat16 keeps 8 bits of mantissa
    images = np.random.default_rng(0).random((4, 8, 8))
    np.testing.assert_array_equal(dataset_from_array(images.astype(">f4")).data, dataset_from_array(images.astype(np.float32)).data)


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        (dict(params=[1, 2]), TypeError, "params must be a mapping"),
        (dict(epochs=1.5), ValueError, "epochs must be at least 1, a whole number, got 1.5"),
        (dict(epochs="1"), ValueError, "epochs must be at least 1, a whole number, got '1'"),
        (dict(epochs=1, batch_size=3.5), ValueError, "batch_size must be at least 2, a whole number, got 3.5"),
        (dict(epochs=1, batch_size="64"), ValueError, "batch_size must be at least 2, a whole number, got '64'"),
    ],
)
def test_bad_parameters_are_one_line_input_errors(params, error, message):
    with pytest.raises(error, match="^" + re.escape(message)) as raised:
        OTClust(n_clusters=2, **params)._config()
    assert isinstance(raised.value, UserError)


def test_numpy_integers_are_accepted_as_parameters():
    config = OTClust(n_clusters=np.int64(2), seed=np.int64(5), epochs=np.int64(1), batch_size=np.int32(16))._config()
    assert (config.seed, config.epochs, config.batch_size) == (5, 1, 16)
    assert all(type(value) is int for value in (config.seed, config.epochs, config.batch_size))


def test_a_quiet_estimator_issues_the_runs_warnings_and_drops_its_progress(capsys, blob_images):
    """verbose=False dropped every message of the run, warnings with the progress: a user never
    learnt that cluster_proportions was not used, the K range narrowed or predict resized the
    images. Each is now one OTClustWarning; the progress stays silent."""
    assert issubclass(OTClustWarning, UserWarning)
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    with pytest.warns(OTClustWarning, match="drc has no cluster-size constraint") as record:
        OTClust(method="drc", n_clusters=2, epochs=1, cluster_proportions="0.5,0.5").fit(x)
    assert len([w for w in record if issubclass(w.category, OTClustWarning)]) == 1
    with pytest.warns(OTClustWarning, match="searches K in 2-15, but among 12 samples K can be chosen up to 9"):
        OTClust(n_clusters="auto", epochs=1, refit=False).fit(x[:12])
    images, _ = blob_images
    model = OTClust(n_clusters=3, epochs=1, batch_size=60).fit(images)
    with pytest.warns(OTClustWarning) as record:
        model.predict(np.zeros((2, 10, 10, 3), np.uint8))
    assert [str(w.message) for w in record] == ["converted RGB images to grayscale to match the model", "resized images from 10x10 to 8x8 to match the model"]
    assert capsys.readouterr().err == ""  # no epoch lines, no notes: the warnings went to `warnings`


def test_a_verbose_estimator_prints_warnings_as_note_lines_among_its_progress(capsys, recwarn):
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    OTClust(method="drc", n_clusters=2, epochs=1, cluster_proportions="0.5,0.5", verbose=True).fit(x)
    err = capsys.readouterr().err
    assert "note: drc has no cluster-size constraint" in err and "epoch 1/1" in err
    assert not [w for w in recwarn if "cluster-size constraint" in str(w.message)]


@pytest.mark.parametrize(
    ("settings", "data", "message"),
    [
        (dict(n_clusters="auto:5-2"), "features", "n_clusters 'auto:5-2': need 2 <= MIN <= MAX"),
        (dict(n_clusters="auto", cluster_proportions=[1, 2, 3]), "features", "so K is known: pass n_clusters=K instead of 'auto'"),
        (dict(epochs=1, steps=2), "features", "give one of epochs and steps"),
        (dict(n_clusters=3, cluster_proportions="0.5,0.5"), "features", "cluster_proportions gives 2 sizes but n_clusters is 3"),
        (dict(weights="w.pt"), "features", "weights is for a pretrained backbone (timm:NAME, torchvision:NAME); backbone is 'auto'"),
        (dict(method="deepercluster"), "rectangular images", "needs square images: use params={'rotation': False} for other data"),
        (dict(method="ot-kmeans", backbone="resnet18"), "images", "choose it with params={'autoencoder': 'fc'|'conv'}, not backbone='resnet18'"),
        (dict(augment={"edges": True}), "images", "augment={'edges': True} needs colour (RGB) images"),
        (dict(), "images on a machine without memory", "lower image size of X (the default backbone is built for about 64 px) or batch_size"),
        pytest.param(dict(device="cuda"), "features", "device='cuda' was asked for but no CUDA GPU is visible: use device='cpu'", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")),
    ],
)
def test_errors_name_the_estimators_parameters_not_command_line_options(monkeypatch, settings, data, message):
    """Errors of the code shared with the command line named its options (--clusters, --param
    rotation=false, --image-size), which a Python user cannot type; OTClust words them with its
    parameters, and the command line keeps its wording."""
    from otclust.config import FitConfig
    from otclust.data import decode

    rng = np.random.default_rng(0)
    X = {"features": rng.normal(size=(40, 4)).astype(np.float32), "rectangular images": rng.integers(0, 255, (40, 8, 10)).astype(np.uint8)}.get(data)
    if X is None:
        X = rng.integers(0, 255, (40, 8, 8)).astype(np.uint8)
    if data == "images on a machine without memory":
        monkeypatch.setattr(decode, "available_memory", lambda: 1)
    with pytest.raises(UserError) as raised:
        OTClust(**{"n_clusters": 2, "epochs": 1, "device": "cpu", **settings}).fit(X)
    assert message in str(raised.value) and "--" not in str(raised.value)
    with pytest.raises(UserError, match="--epochs must be at least 1"):  # the shared code's own wording: the command line's
        FitConfig(epochs=0).validate()


def test_warnings_and_predicts_memory_advice_name_the_estimators_parameters(monkeypatch, blob_images):
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    with pytest.warns(OTClustWarning) as record:
        OTClust(method="drc", n_clusters=2, epochs=1, cluster_proportions="0.5,0.5").fit(x)
        OTClust(n_clusters="auto", epochs=1, refit=False).fit(x[:12])
    said = [str(w.message) for w in record if issubclass(w.category, OTClustWarning)]
    assert "drc has no cluster-size constraint; cluster_proportions is not used" in said
    assert "n_clusters='auto' searches K in 2-15, but among 12 samples K can be chosen up to 9: searching 2-9" in said
    assert not [text for text in said if "--" in text]
    images, _ = blob_images
    model = OTClust(n_clusters=3, epochs=1, batch_size=60).fit(images)

    def out_of_memory(batch):
        raise MemoryError

    monkeypatch.setattr(model.model_, "predict_proba", out_of_memory)
    # It named predict's --batch-size, which OTClust does not have (its batch_size trains).
    with pytest.raises(UserError, match=r"^out of memory while predicting: predict X in parts of fewer than 1024 samples$"):
        model.predict(images)

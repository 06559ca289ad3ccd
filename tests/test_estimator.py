import numpy as np
import pytest

from otclust import OTClust
from otclust.errors import UserError
from otclust.estimator import dataset_from_array


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
    # New images of another size and colour mode are converted as the training data were.
    rgb = np.repeat(np.kron(images[:5], np.ones((2, 2), dtype=np.uint8))[..., None], 3, axis=-1)
    assert loaded.predict(rgb).shape == (5,)


def test_array_layouts():
    assert tuple(dataset_from_array(np.zeros((4, 8, 8))).data.shape) == (4, 1, 8, 8)
    assert tuple(dataset_from_array(np.zeros((4, 8, 8, 3))).data.shape) == (4, 3, 8, 8)
    assert tuple(dataset_from_array(np.zeros((4, 3, 8, 8))).data.shape) == (4, 3, 8, 8)
    floats = dataset_from_array(np.full((2, 4, 4), 0.5))
    assert int(floats.data.max()) == 128
    assert dataset_from_array(np.zeros((4, 6))).is_features


def test_bad_arrays_are_user_errors():
    with pytest.raises(UserError, match="NaN"):
        dataset_from_array(np.array([[np.nan, 1.0], [0.0, 1.0]]))
    with pytest.raises(UserError):
        dataset_from_array(np.zeros((4,)))
    with pytest.raises(UserError, match="not fitted"):
        OTClust().predict(np.zeros((2, 8, 8)))

"""The generalisation suite's data generators (benchmarks/suite_data.py), at tiny sizes.

Each set must be readable by otclust's own loaders exactly as the suite names it, be
reproducible from its parameters, and be what its docstring says (balanced, long-tailed, EXIF
photos upright).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import suite_data as sd  # noqa: E402

from otclust.data import load_dataset  # noqa: E402


def load(suite_set: sd.SuiteSet):
    return load_dataset(suite_set.data, split=suite_set.split)


@pytest.fixture(scope="module")
def fake_fashion(tmp_path_factory):
    """A Fashion-MNIST-shaped idx folder (train and test parts): 10 classes x 30 / x 5 images whose
    pixels encode their own index, so a subset's images can be traced back to the source."""
    folder = tmp_path_factory.mktemp("fashion")
    for prefix, per_class in (("train", 30), ("t10k", 5)):
        labels = np.repeat(np.arange(10), per_class)
        np.random.default_rng(0).shuffle(labels)
        images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(len(labels)) % 256
        images[:, 0, 1] = np.arange(len(labels)) // 256
        images[:, 1, :] = labels[:, None] * 20
        sd.write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        sd.write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


def test_idx_files_read_back_by_otclust(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(7, 5, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7)
    sd.write_idx_train(tmp_path, images, labels)
    loaded = load_dataset(f"mnist:{tmp_path}", split="train")
    np.testing.assert_array_equal(loaded.data.numpy()[:, 0], images)
    np.testing.assert_array_equal(loaded.labels, labels)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=6), data=st.data())
def test_balanced_indices_share_classes_evenly(sizes, data):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    n = data.draw(st.integers(0, min(sizes) * len(sizes)))
    keep = sd.balanced_indices(labels, n, seed=data.draw(st.integers(0, 5)))
    assert len(keep) == n and len(np.unique(keep)) == n
    counts = np.bincount(labels[keep], minlength=len(sizes))
    assert counts.max() - counts.min() <= 1


def test_long_tailed_counts_fall_geometrically_by_the_ratio():
    counts = sd.long_tailed_counts(3000, 10, 10.0)
    assert counts[0] == 3000 and counts[-1] == 300
    steps = np.array(counts[:-1]) / np.array(counts[1:])
    np.testing.assert_allclose(steps, 10 ** (1 / 9), rtol=0.01)


def test_fashion_subset_is_balanced_and_drawn_from_the_split(tmp_path, fake_fashion):
    subset = sd.build("fmnist-10k", tmp_path, fake_fashion, n=40)
    data = load(subset)
    assert data.n_samples == subset.n_samples == 40
    np.testing.assert_array_equal(np.bincount(data.labels), [4] * 10)
    source = load_dataset(f"fashion-mnist:{fake_fashion}", split="train")
    index = data.data[:, 0, 0, 0].long() + 256 * data.data[:, 0, 0, 1].long()
    np.testing.assert_array_equal(source.data[index].numpy(), data.data.numpy())
    np.testing.assert_array_equal(source.labels[index.numpy()], data.labels)


def test_fashion_test_split_names_the_installed_test_part(tmp_path, fake_fashion):
    test = sd.build("fmnist-test", tmp_path, fake_fashion)
    assert test.split == "test"
    assert load(test).n_samples == 50
    assert not any(tmp_path.iterdir())  # nothing to write: it is read where it lies


def test_long_tailed_fashion_has_the_promised_class_sizes(tmp_path, fake_fashion):
    lt = sd.build("fmnist-lt", tmp_path, fake_fashion, largest=20, ratio=10.0)
    counts = np.bincount(load(lt).labels, minlength=10)
    assert sorted(counts, reverse=True) == sd.long_tailed_counts(20, 10, 10.0)
    other = np.bincount(load(sd.build("fmnist-lt", tmp_path, fake_fashion, largest=20, ratio=10.0, seed=1)).labels, minlength=10)
    assert np.argmax(other) != np.argmax(counts) or np.argmin(other) != np.argmin(counts)  # the seed picks the head


def test_long_tailed_development_draw_shares_no_image_with_the_avoided_sets(tmp_path, fake_fashion, monkeypatch):
    # the suite's sizes scaled to a fake split of 30 images a class
    monkeypatch.setitem(sd.SUITE, "fmnist-10k", sd.SuiteEntry(sd.fashion_subset, {"n": 100, "seed": 0, "split": "train"}, True))
    monkeypatch.setitem(sd.SUITE, "fmnist-lt", sd.SuiteEntry(sd.fashion_long_tailed, {"largest": 10, "ratio": 10.0, "seed": 0}, True))

    def images(name, **overrides):
        data = load(sd.build(name, tmp_path, fake_fashion, **overrides))
        return set((data.data[:, 0, 0, 0].long() + 256 * data.data[:, 0, 0, 1].long()).tolist()), data.labels

    held_out = images("fmnist-10k")[0] | images("fmnist-lt")[0]
    dev, labels = images("dev-fmnist-lt", largest=8, ratio=4.0)
    assert not dev & held_out
    assert sorted(np.bincount(labels, minlength=10), reverse=True) == sd.long_tailed_counts(8, 10, 4.0)
    # without `avoid` the same draw does take held-out images (so the test can fail)
    assert images("dev-fmnist-lt", largest=8, ratio=4.0, avoid=())[0] & held_out


def test_small_balanced_development_draw_shares_no_image_with_the_avoided_sets(tmp_path, fake_fashion, monkeypatch):
    # fmnist-300 and fmnist-10k scaled to a fake split of 30 images a class
    monkeypatch.setitem(sd.SUITE, "fmnist-300", sd.SuiteEntry(sd.fashion_subset, {"n": 100, "seed": 3, "split": "train"}, True))
    monkeypatch.setitem(sd.SUITE, "fmnist-10k", sd.SuiteEntry(sd.fashion_subset, {"n": 100, "seed": 0, "split": "train"}, True))
    monkeypatch.setitem(sd.SUITE, "fmnist-lt", sd.SuiteEntry(sd.fashion_long_tailed, {"largest": 10, "ratio": 10.0, "seed": 0}, True))

    def images(name, **overrides):
        data = load(sd.build(name, tmp_path, fake_fashion, **overrides))
        return set((data.data[:, 0, 0, 0].long() + 256 * data.data[:, 0, 0, 1].long()).tolist()), data.labels

    held_out = images("fmnist-300")[0] | images("fmnist-10k")[0] | images("fmnist-lt")[0]
    dev, labels = images("dev-fmnist-300", n=50)
    assert not dev & held_out
    assert np.bincount(labels, minlength=10).tolist() == [5] * 10
    assert images("dev-fmnist-300", n=50, avoid=())[0] & held_out  # the test can fail
    # The second small draw avoids the first as well as the held-out sets.
    monkeypatch.setitem(sd.SUITE, "dev-fmnist-300", sd.SuiteEntry(sd.fashion_subset, {**sd.SUITE["dev-fmnist-300"].params, "n": 50}, True))
    second, labels = images("dev-fmnist-300b", n=30)
    assert not second & (held_out | dev)
    assert np.bincount(labels, minlength=10).tolist() == [3] * 10
    # The set smaller than a batch avoids both small draws too.
    monkeypatch.setitem(sd.SUITE, "dev-fmnist-300b", sd.SuiteEntry(sd.fashion_subset, {**sd.SUITE["dev-fmnist-300b"].params, "n": 30}, True))
    third, labels = images("dev-fmnist-100", n=10)
    assert not third & (held_out | dev | second)
    assert np.bincount(labels, minlength=10).tolist() == [1] * 10


def test_fashion_sets_say_when_fashion_mnist_is_missing(tmp_path):
    with pytest.raises(sd.SuiteDataUnavailable, match="Fashion-MNIST not found"):
        sd.build("fmnist-10k", tmp_path, tmp_path / "nowhere", n=10)


def test_shapes_folder_loads_with_one_class_per_shape(tmp_path):
    shapes = sd.build("shapes", tmp_path, n=12, size=(64, 48))
    assert shapes.is_folder and shapes.clusters == 6
    data = load(shapes)
    assert data.n_samples == 12 and data.channels == 3
    np.testing.assert_array_equal(np.bincount(data.labels), [2] * 6)
    assert data.class_names == sorted(sd.SHAPES)


def test_exif_tagged_photos_display_upright(tmp_path):
    from PIL import Image, ImageOps

    folder = tmp_path / "photos"
    folder.mkdir()
    sd.write_photo_folder(folder, lambda i: sd.draw_shape_photo(0, i, (64, 48), mixed=False), 6, sd.SHAPES, 0, exif_fraction=1.0)
    for index in range(6):
        image, label = sd.draw_shape_photo(0, index, (64, 48), mixed=False)
        with Image.open(folder / sd.SHAPES[label] / f"{index:05d}.jpg") as stored:
            assert stored.size == (48, 64)  # the pixels lie turned...
            shown = ImageOps.exif_transpose(stored)
        assert shown.size == (64, 48)  # ...and the tag turns them back
        # Compared coarsely (JPEG blurs fine stripes), the picture is closest to the drawn one,
        # not to the drawn one upside down or mirrored.
        def coarse(picture):
            return np.asarray(Image.fromarray(np.asarray(picture)).resize((16, 12), Image.BOX), dtype=np.float32)

        error = np.abs(coarse(shown) - coarse(image)).mean()
        for wrong in (image[::-1, ::-1], image[::-1], image[:, ::-1]):
            assert error < 0.5 * np.abs(coarse(shown) - coarse(np.ascontiguousarray(wrong))).mean()


def test_photos_depend_only_on_seed_and_index(tmp_path):
    a = sd.build("shapes", tmp_path / "a", n=4, size=(64, 48), seed=5)
    b = sd.build("shapes", tmp_path / "b", n=7, size=(64, 48), seed=5)
    root_a, root_b = Path(a.data.split(":", 1)[1]), Path(b.data.split(":", 1)[1])
    for path in sorted(root_a.rglob("*.jpg")):
        assert path.read_bytes() == (root_b / path.relative_to(root_a)).read_bytes()
    first, _ = sd.draw_shape_photo(5, 0, (64, 48))
    assert not np.array_equal(first, sd.draw_shape_photo(6, 0, (64, 48))[0])


def test_cache_reuses_a_finished_set_and_keys_on_parameters(tmp_path):
    first = sd.build("textures", tmp_path, n=6, size=(40, 30))
    folder = Path(first.data.split(":", 1)[1])
    stamp = (folder / "suite.json").stat().st_mtime_ns
    again = sd.build("textures", tmp_path, n=6, size=(40, 30))
    assert again == first and (folder / "suite.json").stat().st_mtime_ns == stamp
    other = sd.build("textures", tmp_path, n=6, size=(40, 30), seed=1)
    assert other.data != first.data
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_interrupted_build_leaves_no_set_behind(tmp_path):
    def fail(folder):
        (folder / "half-written").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sd.cached(tmp_path, "broken", {"n": 1}, fail)
    assert list(tmp_path.iterdir()) == []


def test_textures_and_strokes_load_as_their_classes(tmp_path):
    tex = load(sd.build("textures", tmp_path, n=12, size=(40, 30)))
    np.testing.assert_array_equal(np.bincount(tex.labels), [2] * 6)
    strokes_set = sd.build("strokes", tmp_path, n=30)
    strokes = load(strokes_set)
    assert strokes.image_size == (28, 28) and strokes_set.clusters == 10
    np.testing.assert_array_equal(np.bincount(strokes.labels), [3] * 10)
    # A pen stroke, not an empty or full canvas: some ink, mostly background.
    ink = (strokes.data.float() / 255).mean(dim=(1, 2, 3))
    assert float(ink.min()) > 0.03 and float(ink.max()) < 0.5


@pytest.mark.parametrize("mode, extension", [("L", "png"), ("RGB", "png"), ("RGB", "jpg")])
def test_a_set_written_as_a_folder_loads_as_the_same_grey_images(tmp_path, fake_fashion, mode, extension):
    """Grey pictures saved as colour files come back grey (one channel), in the set's order."""
    s = sd.build("dev-fmnist", tmp_path / "root", fake_fashion, n=20)
    folder = sd.write_as_folder(s, tmp_path / "folder", mode, extension)
    original, written = load(s), load_dataset(f"folder:{folder}")
    assert written.data.shape == original.data.shape and written.class_names == [f"class{k}" for k in range(10)]
    order = np.argsort([int(Path(p).stem) for p in written.paths])
    np.testing.assert_array_equal(written.labels[order], original.labels)
    difference = (written.data[order].int() - original.data.int()).abs().max().item()
    assert difference == 0 if extension == "png" else difference < 32  # JPEG's loss (12 here) at the fake set's sharp edges
    with pytest.raises(FileExistsError):
        sd.write_as_folder(s, folder)


def test_a_set_written_larger_holds_the_same_pictures_scaled(tmp_path, fake_fashion):
    """--file-size: each picture scaled up (bicubic), still grey, labels in the set's order."""
    from PIL import Image

    s = sd.build("dev-fmnist", tmp_path / "root", fake_fashion, n=20)
    folder = sd.write_as_folder(s, tmp_path / "folder", "RGB", "png", size=56)
    written = load_dataset(f"folder:{folder}", image_size=56)
    assert written.data.shape == (20, 1, 56, 56)
    order = np.argsort([int(Path(p).stem) for p in written.paths])
    original = load(s)
    np.testing.assert_array_equal(written.labels[order], original.labels)
    # Scaled back down, each written picture is close to its original (the bicubic round trip's loss only).
    small = np.stack([np.asarray(Image.fromarray(x[0]).resize((28, 28), Image.BICUBIC), dtype=int) for x in written.data[order].numpy()])
    assert np.abs(small - original.data[:, 0].numpy().astype(int)).mean() < 8


def test_a_tinted_set_loads_as_colour_pictures_of_the_same_shapes(tmp_path, fake_fashion):
    """--file-tint: RGB files the loader keeps in colour, two colours an image drawn from its
    index (the same on every write), and the grey picture recoverable from their mix."""
    s = sd.build("dev-fmnist", tmp_path / "root", fake_fashion, n=20)
    folder = sd.write_as_folder(s, tmp_path / "folder", "RGB", "png", tint=True)
    again = sd.write_as_folder(s, tmp_path / "again", "RGB", "png", tint=True)
    written = load_dataset(f"folder:{folder}")
    assert written.data.shape == (20, 3, 28, 28)
    order = np.argsort([int(Path(p).stem) for p in written.paths])
    original = load(s).data[:, 0].numpy().astype(np.float64) / 255
    np.testing.assert_array_equal(written.labels[order], load(s).labels)
    np.testing.assert_array_equal(written.data.numpy(), load_dataset(f"folder:{again}").data.numpy())
    rgb = written.data[order].numpy().astype(np.float64)
    colours = [tuple(np.unique(image.reshape(3, -1)[:, [original[i].argmin(), original[i].argmax()]], axis=1).T.ravel()) for i, image in enumerate(rgb)]
    assert len(set(colours)) > 10  # the colours differ from image to image
    for image, grey in zip(rgb, original):
        # Each channel is background + grey * (ink - background): linear in the grey picture.
        for channel in image:
            fit = np.polyfit(grey.ravel(), channel.ravel(), 1)
            assert np.abs(np.polyval(fit, grey.ravel()) - channel.ravel()).max() <= 2.0  # rounding to integers


def test_long_tailed_strokes_have_the_promised_class_sizes_and_the_glyphs_of_their_seed(tmp_path):
    entry = sd.build("dev-strokes-lt", tmp_path, largest=20, ratio=10.0)
    glyphs = load(entry)
    counts = sorted(np.bincount(glyphs.labels, minlength=10).tolist(), reverse=True)
    assert counts == sd.long_tailed_counts(20, 10, 10.0) and entry.n_samples == sum(counts)
    # each glyph is the one `strokes` draws at its index with the same seed
    largest = int(np.argmax(np.bincount(glyphs.labels)))
    first = glyphs.data[np.flatnonzero(glyphs.labels == largest)[0], 0].numpy()
    np.testing.assert_array_equal(first, sd.draw_stroke_glyph(7, largest)[0])

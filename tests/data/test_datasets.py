"""Dataset loading: each on-disk format is written in its exact layout (tiny; the writers are in
tests/fake_datasets.py), read back, and checked for shapes, dtypes, labels, pixel orientation and
split order; every user mistake must be a one-line UserError. Nothing here touches the network:
downloads are served from memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from otclust.data import DATASET_NAMES, ImageDataset, conform, load_dataset
from otclust.data import formats
from otclust.data.datasets import dataset_help, parse_spec
from otclust.errors import UserError

from fake_datasets import cifar_pickle, cifar_rows, idx_bytes, pattern_images, write_cifar10, write_cifar100, write_idx_dir, write_stl10


@pytest.fixture(autouse=True)
def no_network_and_private_cache(monkeypatch, tmp_path):
    """Any real download attempt fails the test; the download cache is a fresh directory."""

    def forbidden(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(formats.urllib.request, "urlopen", forbidden)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# --------------------------------------------------------------------------------------------
# digits, Fashion-MNIST on this machine
# --------------------------------------------------------------------------------------------


def test_digits_scaled_to_uint8_with_all_labels():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    ref = load_digits()
    assert ds.data.shape == (1797, 1, 8, 8) and ds.data.dtype == torch.uint8
    assert ds.channels == 1 and ds.image_size == (8, 8) and not ds.is_features
    assert ds.data.max() == 255 and ds.data.min() == 0
    np.testing.assert_array_equal(ds.data[5, 0].numpy(), np.rint(ref.images[5] * 255 / 16).astype(np.uint8))
    assert ds.labels.dtype == np.int64 and set(ds.labels) == set(range(10))
    assert ds.name == "digits" and ds.n_classes == 10 and ds.paths is None
    assert load_dataset("digits", split="train").n_samples == 1797
    with pytest.raises(UserError, match="no 'test' split") as e:
        load_dataset("digits", split="test")
    one_line_error(e)
    with pytest.raises(UserError, match="takes no path"):
        load_dataset("digits:/tmp")


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_the_debian_package():
    ds = load_dataset("fashion-mnist")
    assert ds.data.shape == (70000, 1, 28, 28) and ds.data.dtype == torch.uint8
    assert ds.labels.shape == (70000,) and np.bincount(ds.labels).tolist() == [7000] * 10
    assert ds.class_names[0] == "T-shirt/top"
    test = load_dataset("fashion-mnist", split="test")
    assert torch.equal(test.data, ds.data[60000:])  # "all" is train then test


# --------------------------------------------------------------------------------------------
# idx
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_pixels_labels_and_split_order(tmp_path, gz):
    train, test = write_idx_dir(tmp_path / "m", gz=gz)
    ds = load_dataset(f"mnist:{tmp_path / 'm'}")
    assert ds.data.shape == (5, 1, 4, 5) and ds.data.dtype == torch.uint8
    np.testing.assert_array_equal(ds.data[:, 0].numpy(), np.concatenate([train, test]))
    assert ds.labels.tolist() == [0, 1, 2, 5, 6] and ds.labels.dtype == np.int64
    assert load_dataset(f"mnist:{tmp_path / 'm'}", split="test").labels.tolist() == [5, 6]
    fm = load_dataset(f"fashion-mnist:{tmp_path / 'm'}", split="train")
    assert fm.n_samples == 3 and fm.class_names[9] == "Ankle boot" and fm.name == "fashion-mnist"


def test_idx_train_split_needs_no_test_files_and_resizes(tmp_path):
    write_idx_dir(tmp_path)
    for f in tmp_path.glob("t10k-*"):
        f.unlink()
    ds = load_dataset(f"mnist:{tmp_path}", split="train", image_size=8)
    assert ds.data.shape == (3, 1, 8, 8) and any("resized all 3 images from 4x5 to 8x8" in n for n in ds.notes)
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz not found"):
        load_dataset(f"mnist:{tmp_path}")


def test_idx_errors(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist") as e:
        load_dataset(f"fashion-mnist:{tmp_path}")
    assert "--download" in one_line_error(e)
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(f"mnist:{tmp_path / 'nope'}")
    with pytest.raises(UserError, match="mnist:DIR") as e:  # no default dir, empty cache
        load_dataset("mnist")
    one_line_error(e)

    write_idx_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    good = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(good[:-3]))
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_dataset(f"mnist:{tmp_path}")
    path.write_bytes(b"\x89PNG not idx at all")
    with pytest.raises(UserError, match="not an idx file"):
        load_dataset(f"mnist:{tmp_path}")
    path.write_bytes(gzip.compress(good))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.arange(2))))
    with pytest.raises(UserError, match="do not belong together"):
        load_dataset(f"mnist:{tmp_path}")


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def test_cifar10_pickles_parent_or_batches_dir(tmp_path):
    batches = write_cifar10(tmp_path)
    for spec in (f"cifar10:{tmp_path}", f"cifar10:{batches}"):
        ds = load_dataset(spec)
        assert ds.data.shape == (11, 3, 32, 32) and ds.data.dtype == torch.uint8
        assert ds.labels.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 9]  # batches 1..5, then test
        assert ds.class_names[1] == "automobile"
    # First image of data_batch_3: planes R, G, B are pattern images 0, 1, 2 with offset 30.
    expected = pattern_images(3, 32, 32, 30)
    np.testing.assert_array_equal(ds.data[4].numpy(), expected)
    assert ds.data[4, 0, 0, 1] != ds.data[4, 0, 1, 0]  # rows are rows
    test = load_dataset(f"cifar10:{tmp_path}", split="test")
    assert test.n_samples == 1 and test.labels.tolist() == [9]


def test_cifar10_archive_in_dir_is_extracted(tmp_path):
    src = tmp_path / "src"
    write_cifar10(src)
    dest = tmp_path / "dl"
    dest.mkdir()
    with tarfile.open(dest / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert load_dataset(f"cifar10:{dest}").n_samples == 11
    assert (dest / "cifar-10-batches-py" / "test_batch").is_file()


def test_cifar_errors_and_no_code_execution(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py/data_batch_1 not found|data_batch_1 not found") as e:
        load_dataset(f"cifar10:{tmp_path}")
    assert "--download" in one_line_error(e)
    batches = write_cifar10(tmp_path)
    (batches / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3"):
        load_dataset(f"cifar10:{tmp_path}")
    assert load_dataset(f"cifar10:{tmp_path}", split="test").n_samples == 1

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (batches / "data_batch_3").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(UserError, match="not a CIFAR python-format file") as e:
        load_dataset(f"cifar10:{tmp_path}")
    assert "builtins.print" in one_line_error(e)
    cifar_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, batches / "data_batch_3")
    with pytest.raises(UserError, match="N x 3072"):
        load_dataset(f"cifar10:{tmp_path}")


def test_cifar100_uses_the_20_superclasses(tmp_path):
    d = write_cifar100(tmp_path, train_coarse=[19, 7, 0], test_coarse=[5, 6])
    ds = load_dataset(f"cifar100-20:{tmp_path}")
    assert ds.data.shape == (5, 3, 32, 32) and ds.labels.tolist() == [19, 7, 0, 5, 6]
    assert ds.class_names == [f"super{i}" for i in range(20)] and ds.n_classes == 20
    np.testing.assert_array_equal(ds.data[3].numpy(), pattern_images(3, 32, 32, 9))
    (d / "train").unlink()
    cifar_pickle({b"data": cifar_rows(1, 0), b"fine_labels": [1]}, d / "train")
    with pytest.raises(UserError, match="coarse_labels"):
        load_dataset(f"cifar100-20:{tmp_path}")
    with pytest.raises(UserError, match="cifar100-20"):
        load_dataset(f"cifar100:{tmp_path}")


# --------------------------------------------------------------------------------------------
# STL-10
# --------------------------------------------------------------------------------------------


def test_stl10_column_major_labels_and_splits(tmp_path):
    images = write_stl10(tmp_path)
    ds = load_dataset(f"stl10:{tmp_path}")
    assert ds.data.shape == (3, 3, 96, 96) and ds.data.dtype == torch.uint8
    np.testing.assert_array_equal(ds.data.numpy(), np.concatenate([images["train"], images["test"]]))
    assert ds.labels.tolist() == [0, 9, 3] and ds.class_names == formats.STL10_CLASSES

    unl = load_dataset(f"stl10:{tmp_path / 'stl10_binary'}", split="unlabeled")
    assert unl.labels is None and unl.n_samples == 2 and any("evaluation skipped" in n for n in unl.notes)
    np.testing.assert_array_equal(unl.data.numpy(), images["unlabeled"])
    mixed = load_dataset(f"stl10:{tmp_path}", split="train+unlabeled")
    assert mixed.n_samples == 4 and mixed.labels is None and mixed.split == "train+unlabeled"
    assert any("includes unlabeled images" in n for n in mixed.notes)
    with pytest.raises(UserError, match="no 'valid' split"):
        load_dataset(f"stl10:{tmp_path}", split="valid")
    with pytest.raises(UserError, match="twice"):
        load_dataset(f"stl10:{tmp_path}", split="train+train")


def test_stl10_errors(tmp_path):
    write_stl10(tmp_path)
    d = tmp_path / "stl10_binary"
    (d / "test_y.bin").write_bytes(bytes([11]))
    with pytest.raises(UserError, match="1..10"):
        load_dataset(f"stl10:{tmp_path}", split="test")
    (d / "train_X.bin").write_bytes(b"\x00" * 1000)
    with pytest.raises(UserError, match="whole number of 3x96x96 images"):
        load_dataset(f"stl10:{tmp_path}", split="train")
    (d / "unlabeled_X.bin").unlink()
    with pytest.raises(UserError, match="unlabeled_X.bin not found"):
        load_dataset(f"stl10:{tmp_path}", split="unlabeled")


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def test_folder_with_class_subfolders(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    (tmp_path / "dog").mkdir()
    (tmp_path / "cat").mkdir()
    Image.fromarray(rgb).save(tmp_path / "dog" / "b.png")
    Image.fromarray(np.full((6, 4), 77, np.uint8)).save(tmp_path / "dog" / "a.bmp")
    Image.fromarray(np.zeros((6, 4, 3), np.uint8)).save(tmp_path / "cat" / "x.jpg")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "cat" / "y.PNG")  # odd size out
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()

    ds = load_dataset(f"folder:{tmp_path}")
    # any colour -> RGB; the median shorter side (4), each image centre-cropped to a square
    assert ds.data.shape == (4, 3, 4, 4)
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert [Path(p).name for p in ds.paths] == ["x.jpg", "y.PNG", "a.bmp", "b.png"]
    np.testing.assert_array_equal(ds.data[3].numpy(), rgb[1:5].transpose(2, 0, 1))  # PNG is exact: rows 1-4 of 6
    assert (ds.data[2] == 77).all()  # grayscale repeated into RGB
    assert any(n.startswith("working resolution 4x4: the images' median shorter side") and "--image-size" in n for n in ds.notes)
    assert "ignored 1 file without an image extension (cat/notes.txt)" in ds.notes
    assert ds.name == f"folder:{tmp_path.resolve()}"

    sized = load_dataset(f"folder:{tmp_path}", image_size=5)
    assert sized.data.shape == (4, 3, 5, 5) and any("resized to 5x5 (--image-size)" in n for n in sized.notes)


def test_flat_grayscale_folder_and_special_modes(tmp_path):
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 15).save(tmp_path / "a.png")
    Image.fromarray((np.full((4, 4), 65535, np.uint16))).save(tmp_path / "b16.png")  # 16-bit
    grey_gif = Image.fromarray(np.full((4, 4), 128, np.uint8)).convert("P")
    grey_gif.save(tmp_path / "c.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 8x4, shown 4x8
    Image.fromarray(np.full((8, 4), 200, np.uint8)).save(tmp_path / "d.jpg", exif=exif)

    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.data.shape == (4, 1, 4, 4) and ds.labels is None and ds.class_names is None
    assert "no class subfolders: evaluation skipped" in ds.notes
    np.testing.assert_array_equal(ds.data[0, 0].numpy(), np.arange(16).reshape(4, 4) * 15)
    assert (ds.data[1] == 255).all()  # 16-bit white stays white, not clipped garbage
    assert (ds.data[2] == 128).all()
    assert abs(int(ds.data[3].float().mean()) - 200) <= 2
    assert ds.split == "all" and load_dataset(f"folder:{tmp_path}", split="train").n_samples == 4
    with pytest.raises(UserError, match="no 'test' split"):
        load_dataset(f"folder:{tmp_path}", split="test")


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no images found in PATH") as e:
        load_dataset(f"folder:{tmp_path}")
    one_line_error(e)
    with pytest.raises(UserError, match="path not found"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="needs a path"):
        load_dataset("folder")
    (tmp_path / "k").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "k" / "ok.png")
    (tmp_path / "k" / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    ds = load_dataset(f"folder:{tmp_path}")  # one bad file is skipped, with a note naming it
    assert ds.n_samples == 1 and any(n.startswith("skipped 1 of 2 image files") and "broken.jpg" in n for n in ds.notes)
    (tmp_path / "k" / "ok.png").unlink()
    with pytest.raises(UserError, match="none of the 1 image files .* broken.jpg") as e:
        load_dataset(f"folder:{tmp_path}")
    one_line_error(e)
    Image.new("RGB", (4, 4)).save(tmp_path / "k" / "ok.png")
    (tmp_path / "k" / "broken.jpg").unlink()
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(UserError, match=r"both class subfolders \(k\) and 1 loose images"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(UserError, match="not a directory"):
        load_dataset(f"folder:{tmp_path / 'loose.png'}")


# --------------------------------------------------------------------------------------------
# Feature vectors
# --------------------------------------------------------------------------------------------


def test_features_with_default_and_explicit_labels(tmp_path):
    x = np.random.default_rng(2).normal(size=(5, 3))
    np.save(tmp_path / "emb.npy", x)
    ds = load_dataset(f"features:{tmp_path / 'emb.npy'}", image_size=32)
    assert ds.is_features and ds.data.dtype == torch.float32 and ds.data.shape == (5, 3)
    assert ds.channels is None and ds.image_size is None and ds.labels is None
    assert any(n.startswith("no labels") and "emb.labels.npy" in n for n in ds.notes)
    assert "image size ignored: the data are feature vectors" in ds.notes
    np.testing.assert_allclose(ds.data.numpy(), x.astype(np.float32))

    np.save(tmp_path / "emb.labels.npy", np.array([2, 0, 2, 1, 0]))
    assert load_dataset(f"features:{tmp_path / 'emb.npy'}").labels.tolist() == [2, 0, 2, 1, 0]
    np.save(tmp_path / "names, with comma.npy", np.array(["b", "a", "b", "c", "a"]))
    ds = load_dataset(f"features:{tmp_path / 'emb.npy'},labels={tmp_path / 'names, with comma.npy'}")
    assert ds.labels.tolist() == [1, 0, 1, 2, 0] and ds.class_names == ["a", "b", "c"]
    assert parse_spec("features:a,b.npy,labels=c.npy") == ("features", Path("a,b.npy"), {"labels": "c.npy"})


def test_features_errors(tmp_path, monkeypatch):
    f = tmp_path / "f.npy"
    bad = np.ones((4, 2))
    bad[2, 1] = np.nan
    np.save(f, bad)
    with pytest.raises(UserError, match="NaN or infinite values in 1 rows \\(first: row 2\\)") as e:
        load_dataset(f"features:{f}")
    one_line_error(e)
    np.save(f, np.ones(4))
    with pytest.raises(UserError, match="N x D"):
        load_dataset(f"features:{f}")
    np.save(f, np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="not a plain numeric .npy"):
        load_dataset(f"features:{f}")
    np.savez(tmp_path / "z.npz", a=np.ones((2, 2)))
    with pytest.raises(UserError, match="npz"):
        load_dataset(f"features:{tmp_path / 'z.npz'}")
    np.save(f, np.ones((4, 2)))
    np.save(tmp_path / "l.npy", np.arange(3))
    with pytest.raises(UserError, match="one label per row"):
        load_dataset(f"features:{f},labels={tmp_path / 'l.npy'}")
    np.save(tmp_path / "l.npy", np.array([0, -1, 1, 1]))
    with pytest.raises(UserError, match="negative labels"):
        load_dataset(f"features:{f},labels={tmp_path / 'l.npy'}")
    with pytest.raises(UserError, match="labels file not found"):
        load_dataset(f"features:{f},labels={tmp_path / 'absent.npy'}")
    with pytest.raises(UserError, match="path not found"):
        load_dataset(f"features:{tmp_path / 'absent.npy'}")
    # A text table is named as one, with the line that converts it, which must then load.
    table = tmp_path / "emb.csv"
    np.savetxt(table, np.arange(8.0).reshape(4, 2), delimiter=",")
    with pytest.raises(UserError, match="is a text table") as e:
        load_dataset(f"features:{table}")
    one_line_error(e)
    convert = str(e.value).split("convert it once with ")[1].split(" (add")[0]
    monkeypatch.chdir(tmp_path)
    eval(convert, {"numpy": np})  # the user's own line, run as they would
    assert load_dataset(f"features:{tmp_path / 'emb.npy'}").data.shape[0] == 4
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(UserError, match="is not a .npy file"):
        load_dataset(f"features:{tmp_path / 'junk.npy'}")


def test_finite_features_beyond_float32s_range_are_named_as_such(tmp_path):
    """float64 features of about 1e39 (finite) were told they held NaN or infinite values to
    impute, after numpy's 'overflow encountered in cast' warning: the cast to float32 made them inf."""
    f = tmp_path / "big.npy"
    big = np.ones((5, 3))
    big[1:3] = -1e39
    np.save(f, big)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning either
        with pytest.raises(UserError, match=r"holds values up to 1e\+39, beyond float32's range \(about 3.4e38\) in which otclust computes: rescale them") as e:
            load_dataset(f"features:{f}")
    one_line_error(e)
    np.save(f, big / 1e10)  # within range: loads
    assert load_dataset(f"features:{f}").data.shape == (5, 3)


# --------------------------------------------------------------------------------------------
# Spec parsing and the registry
# --------------------------------------------------------------------------------------------


def test_unknown_names_and_bad_arguments(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("imagenet")
    message = one_line_error(e)
    assert all(name in message for name in DATASET_NAMES)
    with pytest.raises(UserError, match="did you mean fashion-mnist"):
        load_dataset("fashon-mnist")
    with pytest.raises(UserError, match=f"folder:{tmp_path}"):
        load_dataset(str(tmp_path))
    with pytest.raises(UserError, match="empty path"):
        load_dataset("cifar10:")
    with pytest.raises(UserError, match="empty dataset name"):
        load_dataset("  ")
    with pytest.raises(UserError, match="bad image size"):
        load_dataset("digits", image_size=0)
    with pytest.raises(UserError, match="bad image size 4.5"):  # was "'float' object is not iterable"
        load_dataset("digits", image_size=4.5)
    # Not a string: was AttributeError 'strip'; a Path is told how to name its kind of files.
    with pytest.raises(TypeError, match="must be a string NAME or NAME:PATH") as e:
        load_dataset(3)
    assert isinstance(e.value, UserError)
    with pytest.raises(UserError, match="must be a string.*'folder:digits'"):
        load_dataset(Path("digits"))
    assert parse_spec("Fashion_MNIST") == ("fashion-mnist", None, {})
    assert parse_spec("folder:a:b") == ("folder", Path("a:b"), {})
    assert DATASET_NAMES == [
        "digits", "mnist", "fashion-mnist", "cifar10", "cifar100-20", "stl10", "folder", "features"
    ]  # fmt: skip
    assert all(name.split("[")[0].split(":")[0] in dataset_help() for name in DATASET_NAMES)


# --------------------------------------------------------------------------------------------
# Downloads (served from memory)
# --------------------------------------------------------------------------------------------


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serve(monkeypatch, files: dict[str, bytes], calls: list[str]):
    def urlopen(request, timeout=None):
        url = request.full_url
        calls.append(url)
        if url not in files:
            raise urllib.error.URLError("connection refused")
        return FakeResponse(files[url])

    monkeypatch.setattr(formats.urllib.request, "urlopen", urlopen)


def test_download_cifar10_into_cache_then_reuse(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar10(src)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = buffer.getvalue()
    remote = formats.Remote("cifar-10-python.tar.gz", ("https://a/x.tgz", "https://b/x.tgz"),
                            hashlib.md5(archive).hexdigest(), extract=True)  # fmt: skip
    monkeypatch.setitem(formats.REMOTES, "cifar10", (remote,))
    calls: list[str] = []
    serve(monkeypatch, {"https://b/x.tgz": archive}, calls)  # first mirror down

    with pytest.raises(UserError, match="--download"):
        load_dataset("cifar10")  # not downloaded without being asked
    assert calls == []
    ds = load_dataset("cifar10", download=True)
    assert ds.n_samples == 11 and calls == ["https://a/x.tgz", "https://b/x.tgz"]
    cache = tmp_path / "cache" / "otclust" / "cifar10"
    assert (cache / "cifar-10-batches-py" / "batches.meta").is_file()
    assert not (cache / "cifar-10-python.tar.gz").exists()  # archive removed after unpacking
    assert load_dataset("cifar10").n_samples == 11 and len(calls) == 2  # found in the cache


def test_download_mnist_to_given_dir_and_failures(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_idx_dir(src)
    files, remotes = {}, []
    for p in sorted(src.iterdir()):
        url = f"https://m/{p.name}"
        files[url] = p.read_bytes()
        remotes.append(formats.Remote(p.name, (url,), hashlib.md5(files[url]).hexdigest()))
    monkeypatch.setitem(formats.REMOTES, "mnist", tuple(remotes))
    calls: list[str] = []
    serve(monkeypatch, files, calls)
    # Files already there are kept (a re-gzipped copy has another checksum but is valid).
    write_idx_dir(tmp_path / "dl", n_test=4)
    for f in (tmp_path / "dl").glob("train-*"):
        f.unlink()
    ds = load_dataset(f"mnist:{tmp_path / 'dl'}", download=True)
    assert ds.n_samples == 7
    assert sorted(calls) == ["https://m/train-images-idx3-ubyte.gz", "https://m/train-labels-idx1-ubyte.gz"]

    serve(monkeypatch, {}, calls)
    with pytest.raises(UserError, match="could not download mnist.*connection refused") as e:
        load_dataset(f"mnist:{tmp_path / 'dl2'}", download=True)
    one_line_error(e)
    serve(monkeypatch, {url: b"tampered" for url in files}, calls)
    with pytest.raises(UserError, match="checksum"):
        load_dataset(f"mnist:{tmp_path / 'dl3'}", download=True)
    assert not list((tmp_path / "dl3").glob("*.part"))


# --------------------------------------------------------------------------------------------
# ImageDataset and conform
# --------------------------------------------------------------------------------------------


def small_dataset() -> ImageDataset:
    data = torch.from_numpy(pattern_images(4, 6, 6)).unsqueeze(1)
    return ImageDataset(data, np.array([0, 1, 0, 1]), "toy", paths=list("abcd"), notes=["n"])


def test_subset_and_validation():
    ds = small_dataset()
    for idx in ([2, 1], np.array([2, 1]), torch.tensor([2, 1])):
        sub = ds.subset(idx)
        assert sub.labels.tolist() == [0, 1] and sub.paths == ["c", "b"]
        assert torch.equal(sub.data, ds.data[[2, 1]])
    masked = ds.subset(np.array([False, True, False, True]))
    assert masked.paths == ["b", "d"] and masked.labels.tolist() == [1, 1]
    sub.notes.append("x")
    assert ds.notes == ["n"] and len(ds.subset([])) == 0
    with pytest.raises(ValueError):
        ImageDataset(torch.zeros(2, 2, 4, 4, dtype=torch.uint8), None, "bad")
    with pytest.raises(ValueError):
        ImageDataset(torch.zeros(2, 3), np.zeros(3), "bad")
    assert "toy" in repr(ds) and "4x1x6x6" in repr(ds)


def test_conform_channels_and_size():
    ds = small_dataset()
    assert conform(ds, 1, (6, 6)) is ds and conform(ds, 1, None) is ds
    assert conform(ds.subset([]), 3, None).data.shape == (0, 3, 6, 6)
    rgb = conform(ds, 3, 12)
    assert rgb.data.shape == (4, 3, 12, 12) and len(rgb.notes) == 3 and ds.notes == ["n"]
    assert torch.equal(rgb.data[:, 0], rgb.data[:, 2])
    colour = np.random.default_rng(3).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    cds = ImageDataset(torch.from_numpy(colour).permute(0, 3, 1, 2).contiguous(), None, "c")
    gray = conform(cds, 1, (5, 7))
    np.testing.assert_array_equal(gray.data[1, 0].numpy(), np.asarray(Image.fromarray(colour[1]).convert("L")))
    assert gray.notes == ["converted RGB images to grayscale to match the model"]
    feats = ImageDataset(torch.zeros(3, 4), None, "f")
    with pytest.raises(UserError, match="feature vectors"):
        conform(feats, 3, 32)

"""Every on-disk reader fed truncated or garbled bytes: a one-line UserError (or, where the bytes
still happen to form a valid file, a well-formed result), never another exception or a hang.

Each test starts from a small valid file of the real format, then lets hypothesis cut it short,
overwrite stretches of it with arbitrary bytes, or replace it entirely. Deadlines catch hangs.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from otclust.data import formats, load_dataset
from otclust.data.decode import SETTINGS
from otclust.errors import UserError

FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def damaged(draw, original: bytes) -> bytes:
    """``original`` truncated, overwritten in a few places, extended, or replaced by noise."""
    kind = draw(st.sampled_from(["truncate", "overwrite", "append", "noise", "header"]))
    if kind == "truncate":
        return original[: draw(st.integers(0, max(0, len(original) - 1)))]
    if kind == "noise":
        return draw(st.binary(max_size=600))
    if kind == "append":
        return original + draw(st.binary(min_size=1, max_size=64))
    data = bytearray(original)
    spots = draw(st.lists(st.tuples(st.integers(0, max(0, len(data) - 1)), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4))
    for at, chunk in spots:
        if kind == "header":
            at = at % min(len(data), 32)
        data[at : at + len(chunk)] = chunk
    return bytes(data[: len(original) + 8])


def check(read, raw: bytes, suffix: str = ""):
    """Write ``raw`` to a fresh file and read it; only UserError may escape, on one line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"file{suffix}"
        path.write_bytes(raw)
        try:
            return read(path)
        except UserError as e:
            assert str(e) and "\n" not in str(e)
            return None


# --------------------------------------------------------------------------------------------
# idx
# --------------------------------------------------------------------------------------------

_IDX = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 3, 4) + bytes(range(24))


@FUZZ
@given(raw=damaged(_IDX), gz=st.booleans())
def test_idx_reader_garbled(raw, gz):
    if gz:
        raw = gzip.compress(raw)
    result = check(formats.read_idx, raw)
    if result is not None:
        assert isinstance(result, np.ndarray)


@FUZZ
@given(raw=damaged(gzip.compress(_IDX)))
def test_idx_reader_garbled_gzip_stream(raw):
    check(formats.read_idx, raw)


def test_idx_header_promising_huge_dims_is_refused_without_allocating():
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"\0" * 8
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "f").write_bytes(raw)
        with pytest.raises(UserError, match="truncated or corrupt"):
            formats.read_idx(Path(tmp) / "f")


# --------------------------------------------------------------------------------------------
# CIFAR pickles: also never unpickle anything but arrays, lists, numbers and strings
# --------------------------------------------------------------------------------------------

_CIFAR = pickle.dumps(
    {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [1, 2], b"batch_label": b"x"}, protocol=2
)


def _read_cifar_batch(path: Path):
    batch = formats.read_cifar_pickle(path)
    images = formats._cifar_images(batch, path)
    labels = formats._cifar_labels(batch, "labels", len(images), path)
    assert images.dtype == np.uint8 and labels.dtype == np.int64 and len(labels) == len(images)
    return images


@FUZZ
@given(raw=damaged(_CIFAR))
def test_cifar_reader_garbled(raw):
    check(_read_cifar_batch, raw)


@pytest.mark.parametrize(
    "batch",
    [
        {"data": np.zeros((1, 3072), np.uint8), "labels": 5},  # not a list
        {"data": np.zeros((1, 3072), np.uint8), "labels": ["cat"]},  # not numbers
        {"data": np.zeros((1, 3072), np.uint8), "labels": [-1]},  # negative
        {"data": np.zeros((1, 3072), np.float64), "labels": [0]},  # not bytes
        {"data": "nope", "labels": [0]},
    ],
)
def test_cifar_wrong_contents_are_user_errors(batch):
    assert check(_read_cifar_batch, pickle.dumps(batch, protocol=2)) is None


class _Payload:
    def __reduce__(self):
        return (print, ("executed",))


def test_cifar_pickle_never_runs_code(capsys):
    assert check(_read_cifar_batch, pickle.dumps({"data": _Payload()})) is None
    assert "executed" not in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# STL-10 binary
# --------------------------------------------------------------------------------------------

_STL_X = bytes(range(256)) * (2 * 3 * 96 * 96 // 256)
_STL_Y = bytes([1, 10])


@FUZZ
@given(images=damaged(_STL_X), labels=damaged(_STL_Y))
def test_stl_reader_garbled(images, labels):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "train_X.bin").write_bytes(images)
        (Path(tmp) / "train_y.bin").write_bytes(labels)
        try:
            part = formats.read_stl10_part(Path(tmp), "train")
        except UserError as e:
            assert "\n" not in str(e)
        else:
            assert part.data.shape[1:] == (3, 96, 96) and part.labels.min() >= 0 and part.labels.max() <= 9


# --------------------------------------------------------------------------------------------
# .npy features
# --------------------------------------------------------------------------------------------


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


_NPY = _npy_bytes(np.arange(12, dtype=np.float32).reshape(4, 3))


@FUZZ
@given(raw=damaged(_NPY))
def test_features_reader_garbled(raw):
    part = check(lambda p: formats.read_features(p, None, labels_explicit=False), raw, ".npy")
    if part is not None:
        assert part.data.dtype == np.float32 and part.data.ndim == 2


@FUZZ
@given(raw=damaged(_npy_bytes(np.array([0, 1, 1, 2]))))
def test_feature_labels_reader_garbled(raw):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "x.npy").write_bytes(_NPY)
        (Path(tmp) / "y.npy").write_bytes(raw)
        try:
            part = formats.read_features(Path(tmp) / "x.npy", Path(tmp) / "y.npy", labels_explicit=True)
        except UserError as e:
            assert "\n" not in str(e)
        else:
            assert part.labels.shape == (4,) and part.labels.min() >= 0


def test_object_npy_is_refused_not_unpickled(capsys):
    raw = _npy_bytes(np.array([_Payload()], dtype=object))
    assert check(lambda p: formats.read_features(p, None, labels_explicit=False), raw, ".npy") is None
    assert "executed" not in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def _image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


_IMAGES = {fmt: _image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}
_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(sorted(_IMAGES)))
def test_image_folder_with_a_garbled_file(data, fmt):
    raw = data.draw(damaged(_IMAGES[fmt]))
    saved = (SETTINGS.cache, SETTINGS.progress)
    SETTINGS.cache, SETTINGS.progress = False, False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            Image.new("RGB", (12, 10), (9, 9, 9)).save(Path(tmp) / "good.png")
            (Path(tmp) / f"bad{_SUFFIX[fmt]}").write_bytes(raw)
            dataset = load_dataset(f"folder:{tmp}")  # the good file always makes it
            assert 1 <= dataset.n_samples <= 2 and dataset.data.dtype.is_floating_point is False
            if dataset.n_samples == 1:
                assert any(n.startswith("skipped 1 of 2") for n in dataset.notes)
            (Path(tmp) / "good.png").unlink()
            try:
                alone = load_dataset(f"folder:{tmp}")
            except UserError as e:
                assert "\n" not in str(e) and str(e).startswith("none of the 1 image files")
            else:
                assert alone.n_samples == 1
    finally:
        SETTINGS.cache, SETTINGS.progress = saved

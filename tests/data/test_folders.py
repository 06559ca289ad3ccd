"""Folders of real-world images: the working resolution, decoding (JPEG draft, EXIF, modes, worker
processes), the memory budget, the decoded-image cache, out-of-core sets, and bad input of every
kind (each a note or a one-line error, never a traceback, and nothing of the user's written).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from otclust.data import decode, formats, load_dataset
from otclust.data.decode import SETTINGS
from otclust.errors import UserError


@pytest.fixture(autouse=True)
def private_settings(monkeypatch, tmp_path):
    """A fresh cache folder and default decoder settings for each test; no progress bars."""
    monkeypatch.setenv("OTCLUST_CACHE", str(tmp_path / "decoded-cache"))
    for name, value in vars(decode.DecodeSettings(progress=False)).items():
        monkeypatch.setattr(SETTINGS, name, value)


def photo(path: Path, size=(160, 120), colour=(200, 30, 30), exif_orientation: int | None = None, **save):
    """A JPEG whose left half is ``colour`` and right half black (so rotations are visible)."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = colour
    image = Image.fromarray(arr)
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        save["exif"] = exif
    image.save(path, quality=95, **save)
    return arr


def names(notes: list[str], prefix: str) -> list[str]:
    return [n for n in notes if n.startswith(prefix)]


# --------------------------------------------------------------------------------------------
# Working resolution and decoding
# --------------------------------------------------------------------------------------------


def test_working_resolution_from_the_images_and_the_backbone(tmp_path):
    for i in range(5):
        photo(tmp_path / f"{i}.jpg", size=(160, 120))
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.data.shape == (5, 3, 64, 64)  # small CNN: shorter side 120 capped at 64
    (note,) = names(ds.notes, "working resolution 64x64")
    assert "small-cnn backbone's cap (64 px; median shorter side 120 px)" in note and "centre-cropped" in note and "--image-size" in note
    assert load_dataset(f"folder:{tmp_path}", backbone="resnet18").data.shape == (5, 3, 96, 96)
    resized = load_dataset(f"folder:{tmp_path}", image_size=24)
    assert resized.data.shape == (5, 3, 24, 24) and names(resized.notes, "images centre-cropped and resized to 24x24 (--image-size)")
    # asked for the size the images have (predict asks for the model's): nothing is resized
    assert names(load_dataset(f"folder:{tmp_path}", image_size=(120, 160)).notes, "images read at their own size, 120x160 (--image-size)")
    # a folder of small images keeps their own size: no upsampling
    small = tmp_path / "small"
    small.mkdir()
    for i in range(3):
        Image.new("L", (20, 28), 9).save(small / f"{i}.png")
    assert load_dataset(f"folder:{small}").data.shape == (3, 1, 20, 20)


def test_a_note_names_the_images_the_square_crop_cuts_to_less_than_half(tmp_path):
    """Panoramas and long receipts lose their ends to the centre crop: say how many, and how long.
    2:1 exactly is not yet flagged; a tall image counts as a wide one does."""
    for i in range(3):
        photo(tmp_path / f"ordinary{i}.jpg", size=(160, 120))
    photo(tmp_path / "two-to-one.jpg", size=(200, 100))
    photo(tmp_path / "panorama.jpg", size=(600, 100))
    photo(tmp_path / "receipt.jpg", size=(80, 250))  # tall
    (note,) = names(load_dataset(f"folder:{tmp_path}").notes, "2 of 6 images are more than 2 times as long")
    assert "up to 6:1" in note and "centre-cropped square keeps under half" in note
    ordinary = tmp_path / "ordinary"
    ordinary.mkdir()
    for i in range(3):
        photo(ordinary / f"{i}.jpg", size=(200, 100))
    assert not [n for n in load_dataset(f"folder:{ordinary}").notes if "times as long" in n]


def test_centre_crop_keeps_the_middle_and_exif_rotation_is_applied(tmp_path):
    # stored 160x120 with the left half red; orientation 6 = shown rotated 90 degrees clockwise,
    # so the red half is on top once shown; the centre crop of the 120x160 view keeps rows 20..140
    photo(tmp_path / "a.jpg", size=(160, 120), exif_orientation=6)
    photo(tmp_path / "b.jpg", size=(160, 120))
    ds = load_dataset(f"folder:{tmp_path}", image_size=32)
    rotated, upright = ds.data[0].float(), ds.data[1].float()
    assert rotated[0, :12].mean() > 150 and rotated[0, -12:].mean() < 40  # red on top, black below
    assert upright[0, :, :12].mean() > 150 and upright[0, :, -12:].mean() < 40  # red left, black right
    # reference: Pillow's own transpose + fit of the full-size decode
    from PIL import ImageOps

    with Image.open(tmp_path / "a.jpg") as img:
        ref = np.asarray(ImageOps.fit(ImageOps.exif_transpose(img).convert("RGB"), (32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.abs(rotated.numpy() - ref).mean() < 4  # draft decoding differs from the full decode only slightly


def test_jpeg_draft_decoding_is_used_for_large_photos(tmp_path, monkeypatch):
    photo(tmp_path / "big.jpg", size=(1600, 1200))
    requested = []
    from PIL import JpegImagePlugin

    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        requested.append(size)
        result = original(self, mode, size)
        requested.append(self.size)
        return result

    monkeypatch.setattr("PIL.JpegImagePlugin.JpegImageFile.draft", spy)
    out = decode.decode_one(str(tmp_path / "big.jpg"), (64, 64), rgb=True)
    assert out.shape == (3, 64, 64)
    assert requested[0] == (64, 64) and requested[1] == (200, 150)  # DCT scaled by 1/8, still >= 64


def test_modes_converted_as_documented(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 250, 0  # fully transparent red: alpha dropped, colour kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a_rgba.png")
    palette = Image.new("P", (8, 8))
    palette.putpalette([0, 0, 255] + [0] * 765)  # colour palette -> the folder is RGB
    palette.save(tmp_path / "b_palette.png")
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(tmp_path / "c_16bit.png")  # 10-bit: 1000 * 255 / 1023 -> 249
    Image.new("LA", (8, 8), (60, 0)).save(tmp_path / "d_la.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "e_cmyk.jpg")  # red in CMYK
    Image.new("1", (8, 8), 1).save(tmp_path / "f_bilevel.png")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.data.shape == (6, 3, 8, 8)
    px = ds.data[:, :, 4, 4].tolist()
    assert px[0] == [250, 0, 0] and px[1] == [0, 0, 255] and px[2] == [249, 249, 249] and px[3] == [60, 60, 60]
    assert px[4][0] > 200 and px[4][1] < 40 and px[5] == [255, 255, 255]
    # all grey: one channel, and float images in [0, 1] scaled by 255
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(np.full((8, 8), 0.5, np.float32), "F").save(grey / "f.tif")
    Image.new("L", (8, 8), 7).save(grey / "l.png")
    g = load_dataset(f"folder:{grey}")
    assert g.data.shape == (2, 1, 8, 8) and g.data[:, 0, 0, 0].tolist() == [128, 7]


def grey_pictures_in_colour_files(folder: Path, n: int = 4, spread: int = 0) -> list[np.ndarray]:
    """RGB PNGs and JPEGs of random grey pictures; ``spread`` levels added to red in one pixel."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    pictures = []
    for i in range(n):
        grey = rng.integers(0, 256 - spread, (12, 12), dtype=np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        rgb[5, 5, 0] += spread
        Image.fromarray(rgb).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}", quality=90)
        pictures.append(rgb)
    return pictures


def test_grey_pictures_stored_in_colour_are_kept_grey(tmp_path):
    folder = tmp_path / "scans"
    grey_pictures_in_colour_files(folder)
    SETTINGS.cache_min_images = 0
    first = load_dataset(f"folder:{folder}")
    assert first.data.shape == (4, 1, 12, 12) and names(first.notes, "every image is stored in colour but holds only grey")
    for i, path in enumerate(first.paths):  # exactly what PIL makes of each file in grey
        np.testing.assert_array_equal(first.data[i, 0].numpy(), np.asarray(Image.open(path).convert("L")))
    again = load_dataset(f"folder:{folder}")  # from the cache, which holds the RGB decoding
    assert names(again.notes, "reused the decoded images cached in") and torch.equal(again.data, first.data)


@pytest.mark.parametrize("spread, channels", [(decode.GREY_TOLERANCE, 1), (decode.GREY_TOLERANCE + 1, 3)])
def test_one_coloured_pixel_keeps_the_folder_in_colour(tmp_path, spread, channels):
    pictures = grey_pictures_in_colour_files(tmp_path / "f", spread=spread)
    ds = load_dataset(f"folder:{tmp_path / 'f'}")
    assert ds.data.shape[1] == channels
    if channels == 3:  # nothing changed: the PNG's pixels as stored
        assert not names(ds.notes, "every image is stored in colour") and ds.data[1, :, 5, 5].tolist() == pictures[1][5, 5].tolist()


def test_grey_pictures_too_large_for_memory_stay_colour_on_disk(tmp_path):
    grey_pictures_in_colour_files(tmp_path / "f")
    SETTINGS.memory_budget = 100
    ds = load_dataset(f"folder:{tmp_path / 'f'}")
    assert ds.out_of_core and ds.data.shape == (4, 3, 12, 12)


def test_luma_is_pils_convert_l():
    rgb = np.random.default_rng(2).integers(0, 256, (3, 9, 7, 3), dtype=np.uint8)
    ours = decode.luma(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))
    assert ours.shape == (3, 1, 9, 7)
    for picture, grey in zip(rgb, ours):
        np.testing.assert_array_equal(grey[0], np.asarray(Image.fromarray(picture).convert("L")))


def test_worker_processes_give_the_same_array_as_one_process(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(70):  # above the size where a pool is used
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i:03d}.png")
    SETTINGS.cache = False
    SETTINGS.workers = 1
    one = load_dataset(f"folder:{tmp_path}")
    SETTINGS.workers = 2
    two = load_dataset(f"folder:{tmp_path}")
    assert one.data.shape == (70, 3, 20, 20)
    assert torch.equal(one.data, two.data) and one.paths == two.paths


def test_heic_photos_are_read_upright_as_pillow_heif_shows_them(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")  # CI installs it (requirements-test.txt)
    # iPhone-style: stored landscape with EXIF orientation 6; pillow-heif turns it into the
    # file's own rotation, so the picture is shown (and must be read) 120 wide, 160 tall.
    arr = np.zeros((120, 160, 3), np.uint8)
    arr[:, :80] = (200, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    for i in range(40):  # enough for the decoding pool: registration must reach the workers
        pillow_heif.from_pillow(Image.fromarray(arr)).save(tmp_path / f"{i:02d}.heic", quality=90, exif=exif.tobytes())
    photo(tmp_path / "z.jpg", size=(120, 160))
    SETTINGS.cache, SETTINGS.workers = False, 2
    ds = load_dataset(f"folder:{tmp_path}", image_size=32)
    assert ds.data.shape == (41, 3, 32, 32) and not any("HEIC" in note for note in ds.notes)
    shown = ds.data[0].float()
    assert shown[0, :12].mean() > 150 and shown[0, -12:].mean() < 40  # red on top: turned upright
    from PIL import ImageOps

    pillow_heif.register_heif_opener()
    with Image.open(tmp_path / "00.heic") as img:  # the reference: Pillow's own full decode
        ref = np.asarray(ImageOps.fit(ImageOps.exif_transpose(img).convert("RGB"), (32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.abs(shown.numpy() - ref).mean() < 1
    SETTINGS.workers = 1
    assert torch.equal(load_dataset(f"folder:{tmp_path}", image_size=32).data, ds.data)


def test_a_heic_photos_embedded_thumbnail_is_decoded_when_large_enough(tmp_path, monkeypatch):
    pillow_heif = pytest.importorskip("pillow_heif")
    decode.heif_readable()
    arr = np.zeros((300, 400, 3), np.uint8)
    arr[:, :200] = (200, 30, 30)
    Image.fromarray(arr).save(tmp_path / "phone.heic", quality=90, thumbnails=[128])  # as phones store one
    seen = []
    original = pillow_heif.as_plugin.HeifImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        seen.append((size, self.size))
        return result

    monkeypatch.setattr(pillow_heif.as_plugin.HeifImageFile, "draft", spy)
    small = decode.decode_one(str(tmp_path / "phone.heic"), (64, 64), rgb=True)
    large = decode.decode_one(str(tmp_path / "phone.heic"), (160, 160), rgb=True)
    assert seen == [((64, 64), (128, 96)), ((160, 160), (400, 300))]  # the thumbnail, then the photo itself
    from PIL import ImageOps

    full = np.asarray(ImageOps.fit(Image.fromarray(arr), (64, 64), Image.BILINEAR)).transpose(2, 0, 1).astype(float)
    assert small.shape == (3, 64, 64) and large.shape == (3, 160, 160) and np.abs(small - full).mean() < 6


def test_avif_is_read_where_pillow_was_built_with_it(tmp_path):
    if not decode.avif_readable():
        pytest.skip("this Pillow has no AVIF (the pinned Pillow 13 has)")
    arr = photo(tmp_path / "a.jpg", size=(40, 30))
    Image.fromarray(arr).save(tmp_path / "b.avif", quality=95)
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.data.shape == (2, 3, 30, 30) and not [n for n in ds.notes if "AVIF" in n or n.startswith(("skipped", "ignored"))]
    assert (ds.data[0].float() - ds.data[1].float()).abs().mean() < 4  # the same picture, two lossy codecs


def test_pictures_otclust_cannot_read_here_are_named_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "heif_readable", lambda: False)  # as without pillow-heif
    monkeypatch.setattr(decode, "avif_readable", lambda: False)  # as with a Pillow built without AVIF
    for name in ("a.HEIC", "b.heif", "c.avif", "d.CR2", "e.dng", "h.HIF"):
        (tmp_path / name).write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="no images found") as e:  # nothing readable: the error says why
        load_dataset(f"folder:{tmp_path}")
    message = str(e.value)
    assert "\n" not in message and "pip install 'otclust[heif]'" in message and "3 files in HEIC/HEIF (a.HEIC, b.heif, h.HIF)" in message
    assert "1 file in AVIF" in message and "2 files in camera RAW" in message and "convert them to JPEG or PNG" in message
    photo(tmp_path / "f.jpg")
    (tmp_path / "notes.txt").write_text("-")
    (tmp_path / "g.jpg").symlink_to(tmp_path / "nowhere.jpg")
    ds = load_dataset(f"folder:{tmp_path}")
    assert [Path(p).name for p in ds.paths] == ["f.jpg"]
    assert names(ds.notes, "ignored 3 files in HEIC/HEIF (a.HEIC, b.heif, h.HIF): reading them needs pillow-heif")
    assert names(ds.notes, "ignored 2 files in camera RAW (d.CR2, e.dng)") and names(ds.notes, "ignored 1 file in AVIF (c.avif)")
    assert names(ds.notes, "ignored 1 file without an image extension (notes.txt)")
    assert names(ds.notes, "ignored 1 link or special file that leads to no regular file (g.jpg)")


# --------------------------------------------------------------------------------------------
# Memory budget, cache, out of core
# --------------------------------------------------------------------------------------------


def test_over_the_memory_budget_without_the_cache_is_a_one_line_error(tmp_path):
    for i in range(4):
        photo(tmp_path / f"{i}.jpg")
    SETTINGS.cache = False
    SETTINGS.memory_budget = 4 * 3 * 64 * 64 - 1  # one byte short
    with pytest.raises(UserError) as e:
        load_dataset(f"folder:{tmp_path}")
    message = str(e.value)
    assert "\n" not in message and "--memory-budget" in message and "--image-size" in message and "--no-cache" in message
    SETTINGS.memory_budget = 4 * 3 * 64 * 64
    assert load_dataset(f"folder:{tmp_path}").n_samples == 4


def test_cache_is_written_once_and_reused_until_the_folder_changes(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        photo(folder / f"{i}.jpg", colour=(40 * i, 100, 100))
    SETTINGS.cache_min_images = 0
    first = load_dataset(f"folder:{folder}")
    cache_dir = Path(os.environ["OTCLUST_CACHE"])
    entries = sorted(p.name for p in cache_dir.iterdir())
    assert len(entries) == 2 and entries[0].endswith(".json") and entries[1].endswith(".npy")
    assert names(first.notes, "decoded images cached in")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    with monkeypatch.context() as m:
        m.setattr(decode, "decode_into", no_decoding)
        again = load_dataset(f"folder:{folder}")
    assert torch.equal(first.data, again.data) and again.paths == first.paths
    assert names(again.notes, "reused the decoded images cached in")
    # a changed file (new mtime) makes a new entry; so does another resolution
    photo(folder / "1.jpg", colour=(0, 0, 250))
    os.utime(folder / "1.jpg", ns=(1, 10**18))
    changed = load_dataset(f"folder:{folder}")
    assert not torch.equal(changed.data[1], first.data[1]) and len(list(cache_dir.glob("*.npy"))) == 2
    load_dataset(f"folder:{folder}", image_size=16)
    assert len(list(cache_dir.glob("*.npy"))) == 3
    # --no-cache writes nothing
    SETTINGS.cache = False
    load_dataset(f"folder:{folder}", image_size=8)
    assert len(list(cache_dir.glob("*.npy"))) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]  # the user's folder untouched


def test_a_damaged_cache_entry_is_decoded_again(tmp_path):
    for i in range(3):
        photo(tmp_path / f"{i}.jpg")
    SETTINGS.cache_min_images = 0
    first = load_dataset(f"folder:{tmp_path}").data.clone()  # (the entry must not be mapped while we cut it)
    (npy,) = Path(os.environ["OTCLUST_CACHE"]).glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:100])  # truncated
    again = load_dataset(f"folder:{tmp_path}")
    assert torch.equal(first, again.data) and names(again.notes, "decoded images cached in")


def test_unwritable_cache_falls_back_to_memory_with_a_note(tmp_path):
    for i in range(3):
        photo(tmp_path / f"{i}.jpg")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    SETTINGS.cache_min_images = 0
    SETTINGS.cache_dir = str(blocker / "cache")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.n_samples == 3 and names(ds.notes, "not caching the decoded images")
    SETTINGS.memory_budget = 10  # too large for memory and no cache: one line saying what to do
    with pytest.raises(UserError, match="cache") as e:
        load_dataset(f"folder:{tmp_path}")
    assert "\n" not in str(e.value)


def test_out_of_core_set_stays_mapped_and_trains_batch_by_batch(tmp_path):
    from otclust.config import FitConfig
    from otclust.data.datasets import place_for_training
    from otclust.engine import Trainer

    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    SETTINGS.memory_budget = 1000  # 40 x 16 x 16 bytes do not fit
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.out_of_core and names(ds.notes, "the decoded images (10.2 kB) exceed the memory budget")
    (npy,) = Path(os.environ["OTCLUST_CACHE"]).glob("*.npy")
    mapped = np.load(npy, mmap_mode="r")
    ds.data[0, 0, 0, 0]  # the tensor reads the file's pages: a write through it would not reach the file
    assert np.array_equal(mapped, ds.data.numpy())
    assert place_for_training(ds, torch.device("cpu")) is ds.data
    config = FitConfig(method="sela", epochs=1, batch_size=8, clusters=2, data=ds.name, params={"dense_label_limit_gb": 1e-9, "label_updates": 1})
    result = Trainer(config, progress=False, log=lambda m: None).fit(ds)
    assert result.proba.shape == (40, 2) and np.isfinite(result.proba).all()


def test_input_statistics_never_copy_the_whole_set_to_float64(monkeypatch):
    from otclust.data import ImageDataset
    from otclust.methods.base import InputSpec

    data = torch.randint(0, 256, (600, 3, 8, 8), dtype=torch.uint8)
    largest = []
    original = torch.Tensor.double

    def watched(self, *args, **kwargs):
        largest.append(self.numel())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "double", watched)
    spec = InputSpec.from_dataset(ImageDataset(data, None, "x"), chunk=100)
    assert max(largest) <= 100 * 3 * 8 * 8
    monkeypatch.undo()
    reference = data.double() / 255
    np.testing.assert_allclose(spec.mean, reference.mean(dim=(0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(spec.std, reference.std(dim=(0, 2, 3)).numpy(), rtol=1e-9)
    features = torch.randn(500, 7) * 3 + 1
    fspec = InputSpec.from_dataset(ImageDataset(features, None, "f"), chunk=64)
    np.testing.assert_allclose(fspec.mean, features.double().mean(0).numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fspec.std, features.double().std(0).numpy(), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_files_are_skipped_with_one_note(tmp_path, monkeypatch):
    good = [photo(tmp_path / f"good{i}.jpg") for i in range(3)]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image at all")
    full = (tmp_path / "good0.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(full[: len(full) // 2])  # header fine, data cut
    (tmp_path / "readme.txt").write_text("notes")
    (tmp_path / "broken-link.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "link-to-good.jpg").symlink_to(tmp_path / "good1.jpg")  # followed
    os.mkfifo(tmp_path / "fifo.png")  # opening it would block forever: never opened
    (tmp_path / "locked.jpg").write_bytes(full)
    real_open = decode._open

    def deny(path):  # tests run as root, where chmod 000 does not lock a file
        if str(path).endswith("locked.jpg"):
            raise PermissionError(13, "Permission denied")
        return real_open(path)

    monkeypatch.setattr(decode, "_open", deny)
    ds = load_dataset(f"folder:{tmp_path}")
    assert sorted(Path(p).name for p in ds.paths) == ["good0.jpg", "good1.jpg", "good2.jpg", "link-to-good.jpg"]
    (skipped,) = names(ds.notes, "skipped 4 of 8 image files that could not be decoded")
    assert "empty.jpg" in skipped and "and 1 more" in skipped
    (ignored,) = names(ds.notes, "ignored 1 file without an image extension (readme.txt)")
    (links,) = names(ds.notes, "ignored 3 links or special files that lead to no regular file")
    assert "broken-link.jpg" in links and "loop.jpg" in links and "fifo.png" in links
    assert len(good) == 3


def test_images_at_any_depth_below_a_class_subfolder_are_of_that_class(tmp_path):
    """As torchvision's ImageFolder reads a folder: dogs/puppies/d.jpg is a dog; hidden folders
    are not read."""
    for name in ("cats/a.jpg", "cats/b.jpg", "dogs/c.jpg", "dogs/puppies/d.jpg", "dogs/old/2019/e.jpg", "dogs/.thumbs/f.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        photo(tmp_path / name)
    ds = load_dataset(f"folder:{tmp_path}")
    read = {Path(p).relative_to(tmp_path).as_posix(): ds.class_names[label] for p, label in zip(ds.paths, ds.labels)}
    assert read == {"cats/a.jpg": "cats", "cats/b.jpg": "cats", "dogs/c.jpg": "dogs", "dogs/old/2019/e.jpg": "dogs", "dogs/puppies/d.jpg": "dogs"}
    assert list(read) == sorted(read)  # in path order: the decoded-image cache and assignments.csv follow it
    # a tree of dated folders with no images at its top: its first level are the classes
    photos = tmp_path / "photos"
    for name in ("2023/x.jpg", "2024/june/y.jpg", "2024/july/z.jpg"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        photo(photos / name)
    ds = load_dataset(f"folder:{photos}")
    assert ds.class_names == ["2023", "2024"] and sorted(ds.labels) == [0, 1, 1]


def test_links_to_folders_already_read_are_not_read_again(tmp_path):
    """A link back up the tree would loop, and a link to another class's folder would read its
    images twice: each folder is read once, and a note names the links."""
    for name in ("cats/a.jpg", "dogs/b.jpg", "dogs/c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        photo(tmp_path / name)
    os.symlink(tmp_path, tmp_path / "cats" / "up")  # a loop
    os.symlink(tmp_path / "dogs", tmp_path / "more-dogs")
    ds = load_dataset(f"folder:{tmp_path}")
    assert sorted(Path(p).name for p in ds.paths) == ["a.jpg", "b.jpg", "c.jpg"]
    assert ds.class_names == ["cats", "dogs"]
    (note,) = names(ds.notes, "ignored 2 links to folders already read")
    assert "cats/up" in note and "more-dogs" in note


def test_huge_images_follow_pillows_decompression_bomb_limit(tmp_path, monkeypatch):
    """Over Pillow's MAX_IMAGE_PIXELS only JPEGs (and MPOs, JPEGs with more pictures) are read,
    decoded at a reduced scale: also above twice the limit, where Image.open itself refuses them,
    as it would a 200 MP phone photo. Other formats would be decoded whole: refused."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # a 12000x9000 photo in miniature
    photo(tmp_path / "huge.jpg", size=(80, 60))  # 4800 px: over the limit
    photo(tmp_path / "huger.jpg", size=(100, 90))  # 9000 px: over twice the limit
    pair = Image.fromarray(photo(tmp_path / "normal.jpg", size=(40, 30)))
    Image.fromarray(photo(tmp_path / "x.jpg", size=(100, 90))).save(tmp_path / "depth.mpo", format="MPO", save_all=True, append_images=[pair])
    (tmp_path / "x.jpg").unlink()
    Image.new("RGB", (80, 60)).save(tmp_path / "huge.png")  # would be decoded at full size: refused
    Image.new("RGB", (100, 90)).save(tmp_path / "bomb.png")  # Image.open refuses it
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "huger.jpg")  # what the folder loader no longer meets
    ds = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert sorted(Path(p).name for p in ds.paths) == ["depth.mpo", "huge.jpg", "huger.jpg", "normal.jpg"]
    (skipped,) = names(ds.notes, "skipped 2 of 6")
    assert "huge.png" in skipped and "bomb.png" in skipped and "decompression-bomb limit" in skipped
    red = ds.data[:, 0, :, :6].double().mean(dim=(1, 2))  # the left half of every photo is red
    assert torch.all((red - 200).abs() < 12), red


def test_mpo_photos_are_decoded_reduced_like_jpegs(tmp_path, monkeypatch):
    """An MPO's first picture at a reduced DCT scale, as a JPEG's: draft is asked for it."""
    pair = Image.fromarray(photo(tmp_path / "second.jpg", size=(64, 48)))
    Image.fromarray(photo(tmp_path / "first.jpg", size=(640, 480))).save(tmp_path / "p.mpo", format="MPO", save_all=True, append_images=[pair])
    asked = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        asked.append((self.format, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    arr = decode.decode_one(str(tmp_path / "p.mpo"), (32, 32), True)
    assert asked == [("MPO", (32, 32))] and arr.shape == (3, 32, 32)
    assert abs(float(arr[0, :, :12].mean()) - 200) < 12  # the first picture, red on the left


def test_mixed_sizes_and_orientations_share_one_square(tmp_path):
    photo(tmp_path / "wide.jpg", size=(300, 100))
    photo(tmp_path / "tall.jpg", size=(100, 300))
    Image.new("L", (50, 50), 128).save(tmp_path / "grey.png")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.data.shape == (3, 3, 64, 64)  # median shorter side 100, capped at 64; grey repeated to RGB


def test_empty_and_all_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no images found") as e:
        load_dataset(f"folder:{tmp_path}")
    assert "\n" not in str(e.value)
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(UserError, match="none of the 2 image files") as e:
        load_dataset(f"folder:{tmp_path}")
    assert "\n" not in str(e.value)


def test_cli_bad_folder_exits_2_without_traceback_and_writes_nothing(tmp_path, capsys):
    from otclust.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"")
    out = tmp_path / "run"
    assert main(["fit", "--data", f"folder:{tmp_path / 'in'}", "--clusters", "2", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "none of the 1 image files" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_data_options_set_the_decoder(tmp_path):
    from otclust.cli import build_parser

    args = build_parser().parse_args(["fit", "--workers", "3", "--no-cache", "--memory-budget", "0.5", "--cache-dir", str(tmp_path)])
    assert (SETTINGS.workers, SETTINGS.cache, SETTINGS.memory_budget, SETTINGS.cache_dir) == (3, False, 0.5e9, str(tmp_path))
    assert args.workers == 3
    build_parser()  # a new command line starts from the defaults again
    assert (SETTINGS.workers, SETTINGS.cache, SETTINGS.memory_budget) == (None, True, None)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["fit", "--workers", "0"])
    assert e.value.code == 2


def test_prefetch_keeps_the_order_and_the_engine_uses_it_out_of_core(monkeypatch):
    from otclust import engine
    from otclust.config import FitConfig
    from otclust.data import ImageDataset
    from otclust.data.datasets import prefetch_to_device

    pairs = [(torch.full((2, 3), i), torch.tensor([i, i])) for i in range(5)]
    got = list(prefetch_to_device(iter(pairs), torch.device("cpu")))
    assert [int(b[0, 0]) for b, _ in got] == list(range(5)) and all(torch.equal(i, p[1]) for (_, i), p in zip(got, pairs))

    drawn = []

    def spy(batches, device):
        for batch, indices in prefetch_to_device(batches, device):
            drawn.append(len(indices))
            yield batch, indices

    monkeypatch.setattr(engine, "prefetch_to_device", spy)
    data = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    config = FitConfig(method="drc", epochs=1, batch_size=16, clusters=2, data="x")
    engine.Trainer(config, progress=False, log=lambda m: None).fit(ImageDataset(data, None, "x", out_of_core=True))
    assert drawn == [16, 16, 16, 16]
    drawn.clear()
    engine.Trainer(config, progress=False, log=lambda m: None).fit(ImageDataset(data, None, "x"))
    assert drawn == []  # in memory: the whole set is on the device, nothing to prefetch


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc (Linux)")
def test_out_of_core_passes_do_not_grow_the_heap_by_the_set_size():
    """Batch-sized temporaries freed between small kept results (a prediction pass) must go back
    to the system: without place_for_training's malloc setting glibc grew this loop by ~390 MB."""
    import subprocess
    import sys

    script = """
import torch
torch.set_num_threads(2)  # the growth needs torch's worker threads (as training uses them)
from otclust.data import ImageDataset
from otclust.data.datasets import place_for_training
def anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("RssAnon:")) // 1024
data = torch.zeros((4, 1, 8, 8), dtype=torch.uint8)
place_for_training(ImageDataset(data, None, "x", out_of_core=True), torch.device("cpu"))
big = torch.empty(8 << 20, dtype=torch.uint8); big.fill_(1); del big
start, keep = anon(), []
for _ in range(100):
    batch = torch.empty(1 << 20, dtype=torch.uint8); batch.fill_(1)
    as_float = batch.float()
    keep.append(as_float[:2500].clone())
    del batch, as_float
print(anon() - start)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) < 40  # MB; the 100 batches of 5 MB total 500 MB


def test_a_link_from_one_class_folder_to_another_leaves_each_class_its_own_images(tmp_path):
    """cats/more -> ../dogs: the dogs stay dogs (they were read as cats, and the dogs folder then
    skipped as already read); the link is named in the note."""
    for name in ("cats/a.jpg", "dogs/b.jpg", "dogs/c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        photo(tmp_path / name)
    os.symlink("../dogs", tmp_path / "cats" / "more")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.class_names == ["cats", "dogs"]
    assert {Path(p).name: int(label) for p, label in zip(ds.paths, ds.labels)} == {"a.jpg": 0, "b.jpg": 1, "c.jpg": 1}
    (note,) = names(ds.notes, "ignored 1 link to folders already read")
    assert "cats/more" in note


def test_system_folders_and_files_are_skipped_and_netpbm_images_read(tmp_path):
    """A NAS's @eaDir thumbnails were read as more photos of the class (and made a flat folder
    look like one with class subfolders); Thumbs.db and desktop.ini are not the user's files
    to count; .pgm/.ppm (face data sets) are images."""
    for name in ("cats/a.jpg", "dogs/b.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        photo(tmp_path / name)
    thumbs = tmp_path / "cats" / "@eaDir" / "a.jpg"
    thumbs.mkdir(parents=True)
    photo(thumbs / "SYNOPHOTO_THUMB_M.jpg")
    (tmp_path / "dogs" / "Thumbs.db").write_bytes(b"\0" * 10)
    Image.new("L", (20, 20), 90).save(tmp_path / "dogs" / "face.pgm")
    ds = load_dataset(f"folder:{tmp_path}")
    assert sorted(Path(p).name for p in ds.paths) == ["a.jpg", "b.jpg", "face.pgm"]
    assert not names(ds.notes, "ignored")
    flat = tmp_path / "flat"
    (flat / "@eaDir" / "x.jpg").mkdir(parents=True)
    photo(flat / "@eaDir" / "x.jpg" / "thumb.jpg")
    photo(flat / "x.jpg")
    photo(flat / "y.jpg")
    assert load_dataset(f"folder:{flat}").n_samples == 2
    (flat / "sub").mkdir()
    photo(flat / "sub" / "z.jpg")
    with pytest.raises(UserError, match=r"both class subfolders \(sub\) and 2 loose images"):
        load_dataset(f"folder:{flat}")


def test_multi_page_and_animated_images_are_noted_as_read_by_their_first_frame(tmp_path):
    first, second = Image.new("L", (20, 20), 200), Image.new("L", (20, 20), 10)
    first.save(tmp_path / "stack.tif", save_all=True, append_images=[second, second])
    first.save(tmp_path / "anim.gif", save_all=True, append_images=[second])
    first.save(tmp_path / "plain.png")
    ds = load_dataset(f"folder:{tmp_path}")
    (note,) = names(ds.notes, "2 of 3 images hold several pages or frames")
    assert "up to 3" in note and "only the first of each is used" in note
    assert ds.data.float().mean() > 150  # the first (bright) frame of each


def test_one_stray_pixel_does_not_change_how_a_float_or_32_bit_image_is_scaled(tmp_path):
    """A [0, 1] float image with one pixel at 1.01, or a 0..255 int32 one with a pixel at 256,
    was read as the next range up (x1 or /257): almost black."""
    ramp = np.arange(256, dtype=np.float32).reshape(16, 16)
    unit = ramp / 255
    unit[0, 0] = 1.01
    Image.fromarray(unit, "F").save(tmp_path / "float.tif")
    wide = ramp.astype(np.int32)
    wide[0, 0] = 256
    Image.fromarray(wide, "I").save(tmp_path / "int32.tif")
    Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / "plain.png")
    ds = load_dataset(f"folder:{tmp_path}", image_size=16)
    by_name = {Path(p).name: ds.data[i, 0].numpy().astype(int) for i, p in enumerate(ds.paths)}
    expected = by_name["plain.png"]
    for name in ("float.tif", "int32.tif"):
        assert np.abs(by_name[name][1:] - expected[1:]).max() <= 1, name  # row 0 holds the stray pixel


def _rgb_profile(name: str, red, green, blue, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB display profile (matrix and gamma): primaries as D50 XYZ columns."""
    import struct

    def s15(x):
        return struct.pack(">i", round(x * 65536))

    def xyz(x, y, z):
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    text = name.encode() + b"\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 3 + b"\0" * 67
    tags = [(b"desc", desc), (b"cprt", b"text" + b"\0" * 4 + b"none\0"), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(*red)), (b"gXYZ", xyz(*green)), (b"bXYZ", xyz(*blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"none" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 28 + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


def test_photos_with_a_colour_profile_are_read_in_srgb(tmp_path):
    """Display P3 (iPhones) or Adobe RGB pixels read as stored would give two devices' photos of one
    scene two colour casts; they are converted to sRGB as a viewer shows them (littlecms, the
    reference being Pillow's own profileToProfile), an sRGB or untagged photo is left as it is."""
    import io

    from PIL import ImageCms

    wide = _rgb_profile("Wide gamut test", (0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    colour = Image.new("RGB", (32, 32), (60, 160, 90))
    colour.save(tmp_path / "wide.png", icc_profile=wide)
    colour.save(tmp_path / "wide.jpg", icc_profile=wide, quality=100, subsampling=0)
    colour.save(tmp_path / "srgb.png", icc_profile=srgb)
    colour.save(tmp_path / "plain.png")
    expected = ImageCms.profileToProfile(colour, ImageCms.ImageCmsProfile(io.BytesIO(wide)), ImageCms.createProfile("sRGB"), outputMode="RGB").getpixel((0, 0))
    assert abs(expected[0] - 60) > 20  # the profile really moves the colour
    ds = load_dataset(f"folder:{tmp_path}", image_size=16)
    pixel = {Path(p).name: tuple(int(v) for v in ds.data[i, :, 8, 8]) for i, p in enumerate(ds.paths)}
    for name in ("wide.png", "wide.jpg"):
        assert max(abs(a - b) for a, b in zip(pixel[name], expected)) <= 2, (name, pixel[name], expected)
    assert pixel["srgb.png"] == pixel["plain.png"] == (60, 160, 90)


def test_class_folders_named_alike_in_composed_and_decomposed_unicode_are_one_class(tmp_path):
    """macOS writes names decomposed (NFD: e + U+0301), Linux keeps them as given (mostly composed,
    NFC: U+00E9): a folder copied from a Mac beside one made here gave two classes shown alike in
    the report, the CSVs and the scores. One class, named in NFC, with a note; every file is
    still read at its real path, also from folders below that differ only in the same way."""
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    for name in (f"{nfc}/a.jpg", f"{nfd}/a.jpg", f"{nfd}/b.jpg", f"{nfc}/cr\u00e8me/c.jpg", f"{nfc}/cre\u0300me/c.jpg", "tea/d.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        photo(tmp_path / name)
    if len(os.listdir(tmp_path)) < 3:
        pytest.skip("this file system holds the two names as one folder (as macOS does)")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.class_names == [nfc, "tea"]
    assert ds.n_samples == 6 and sorted(ds.labels) == [0, 0, 0, 0, 0, 1]
    assert all(os.path.isfile(p) for p in ds.paths) and len(set(ds.paths)) == 6
    (note,) = names(ds.notes, "folders whose names differ only in how accents are encoded")
    assert note.endswith(f"read as one class: {nfc}")


def _grey_tiff(pixels: np.ndarray, photometric: int, bits: int = 0, order: str = "<") -> bytes:
    """An uncompressed grey TIFF of ``pixels`` (uint8 or uint16; ``bits=1``: bilevel, non-zero set),
    little- or big-endian (``order``), written byte by byte so that what is stored does not depend
    on Pillow's writer."""
    import struct

    h, w = pixels.shape
    if bits == 1:
        data, bits = np.packbits(pixels.astype(bool), axis=1).tobytes(), 1
    else:
        data, bits = pixels.astype(pixels.dtype.newbyteorder(order)).tobytes(), 8 * pixels.dtype.itemsize
    tags = [(256, w), (257, h), (258, bits), (259, 1), (262, photometric), (273, 0), (277, 1), (278, h), (279, len(data))]
    start = 8 + 2 + 12 * len(tags) + 4  # the pixels follow the header and the one directory
    entries = b"".join(struct.pack(order + "HHII", tag, 4, 1, start if tag == 273 else value) for tag, value in tags)
    header = (b"II" if order == "<" else b"MM") + struct.pack(order + "HIH", 42, 8, len(tags))
    return header + entries + struct.pack(order + "I", 0) + data


def test_white_is_zero_tiffs_read_as_a_viewer_shows_them_at_every_bit_depth(tmp_path):
    """A 16-bit TIFF stored WhiteIsZero (tag 262 = 0) was read as stored, black and white swapped:
    Pillow inverts only 1- to 8-bit ones."""
    shown = np.arange(256, dtype=np.uint8).reshape(16, 16)  # what a viewer shows: black top left
    files = {
        "black_is_zero_8.tif": _grey_tiff(shown, 1),
        "white_is_zero_8.tif": _grey_tiff(255 - shown, 0),
        "white_is_zero_16.tif": _grey_tiff((255 - shown.astype(np.uint16)) * 257, 0),
    }
    bilevel = np.where(shown < 128, 0, 255).astype(np.uint8)  # top half black
    files["white_is_zero_1.tif"] = _grey_tiff(bilevel == 0, 0, bits=1)  # set bits are black
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        read = decode.decode_one(str(tmp_path / name), (16, 16), rgb=False)[0]
        np.testing.assert_array_equal(read, bilevel if name.endswith("_1.tif") else shown, err_msg=name)
    # Pillow 13 cannot open a big-endian 16-bit one (it is skipped with the reason); should a later
    # Pillow open it, it must read as shown too, inverted once.
    (tmp_path / "big_endian_16.tif").write_bytes(_grey_tiff((255 - shown.astype(np.uint16)) * 257, 0, order=">"))
    if decode.probe(str(tmp_path / "big_endian_16.tif")).error is None:
        np.testing.assert_array_equal(decode.decode_one(str(tmp_path / "big_endian_16.tif"), (16, 16), rgb=False)[0], shown)


def test_10_to_14_bit_data_in_16_bit_files_fill_the_8_bit_range(tmp_path):
    """A 12-bit camera's 0..4095 in a 16-bit PNG or TIFF was divided by 257: 16 dark grey levels."""
    shown = np.arange(256).reshape(16, 16)
    files = {}
    for bits in (8, 10, 12, 14, 16):  # 8-bit values in a 16-bit file up to full 16-bit range
        files[f"{bits}.png"] = np.rint(shown * (2**bits - 1) / 255).astype(np.uint16)
    files["12.tif"] = files["12.png"]
    files["12_int32.tif"] = files["12.png"].astype(np.int32)  # how Pillow before 10 opened a 16-bit PNG
    # 12-bit frames of one camera: one whose brightest pixel is 2000 stays as much darker, and
    # sparse bright pixels (1 in 256) over a dark background are not clipped.
    files["12_dim.png"] = np.rint(shown * 2000 / 255).astype(np.uint16)
    sparse = np.full((16, 16), 40, np.uint16)
    sparse[8, 8] = 4000
    files["12_sparse.png"] = sparse
    for name, stored in files.items():
        Image.fromarray(stored).save(tmp_path / name)
    read = {name: decode.decode_one(str(tmp_path / name), (16, 16), rgb=False)[0].astype(int) for name in files}
    for bits in (8, 10, 12, 14, 16):
        np.testing.assert_array_equal(read[f"{bits}.png"], shown, err_msg=f"{bits}-bit")
    np.testing.assert_array_equal(read["12.tif"], shown)
    np.testing.assert_array_equal(read["12_int32.tif"], shown)
    np.testing.assert_array_equal(read["12_dim.png"], np.rint(files["12_dim.png"] / 4095 * 255))
    assert read["12_sparse.png"][8, 8] == round(4000 * 255 / 4095) and read["12_sparse.png"][0, 0] == round(40 * 255 / 4095)

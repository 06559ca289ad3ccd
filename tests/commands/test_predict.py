"""otclust predict: CSV, --export (copies, links, uncertain/), --assign balanced, and images that
differ from the training data (converted as they were, with a note)."""

import csv
import sys
import unicodedata

import numpy as np
import pytest
import torch
from PIL import Image

from otclust.cli import main
from otclust.commands.predict import balanced_assignment, export_images


@pytest.fixture(scope="module")
def trained(tmp_path_factory, blob_image_folder):
    root = tmp_path_factory.mktemp("predict")
    data = blob_image_folder
    out = root / "run"
    assert main(["fit", "--data", f"folder:{data}", "--clusters", "3", "--epochs", "1", "--batch-size", "40", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    return out / "model.pt", data


def read_rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def files_under(folder):
    """The files a user sees (the export's own hidden record of what it wrote left out)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if (p.is_file() or p.is_symlink()) and not p.name.startswith("."))


def test_export_copies_each_image_into_its_cluster_folder(trained, tmp_path, capsys):
    model, data = trained
    preds, export = tmp_path / "preds.csv", tmp_path / "sorted"
    args = ["predict", "--checkpoint", str(model), "--data", f"folder:{data}", "--out", str(preds), "--export", str(export), "--device", "cpu", "--batch-size", "50"]
    assert main(args) == 0
    rows = read_rows(preds)
    assert len(rows) == 120 and list(rows[0]) == ["index", "path", "cluster", "confidence"]
    copies = files_under(export)
    assert len(copies) == 120  # same file names from two class folders are both kept
    for row in rows:
        folder = export / f"cluster_{int(row['cluster']):02d}"
        assert folder.is_dir()
    for path in export.rglob("*.png"):
        assert not path.is_symlink()
    assert len(files_under(data)) == 120  # the originals stay
    # A second export into the same folder needs --overwrite, which replaces only its own folders.
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    (export / "keep.txt").write_text("mine")
    assert main(args + ["--overwrite"]) == 0
    assert (export / "keep.txt").read_text() == "mine"
    assert len(files_under(export)) == 121


def test_link_and_min_confidence_send_unsure_images_to_uncertain(trained, tmp_path):
    model, data = trained
    base = ["predict", "--checkpoint", str(model), "--data", f"folder:{data}", "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "first.csv")]) == 0
    threshold = float(np.median([float(r["confidence"]) for r in read_rows(tmp_path / "first.csv")]))
    export = tmp_path / "links"
    assert main(base + ["--out", str(tmp_path / "p.csv"), "--export", str(export), "--link", "--min-confidence", str(threshold)]) == 0
    rows = read_rows(tmp_path / "p.csv")
    assert list(rows[0]) == ["index", "path", "cluster", "confidence", "uncertain"]
    unsure = [r for r in rows if r["uncertain"] == "1"]
    assert 0 < len(unsure) < len(rows)
    uncertain_files = list((export / "uncertain").iterdir())
    assert len(uncertain_files) == len(unsure)
    linked = [p for p in export.rglob("*") if p.is_symlink()]
    assert len(linked) == 120
    assert all(p.resolve().is_file() and p.resolve().is_relative_to(data.resolve()) for p in linked)
    for row in rows:
        if row["uncertain"] == "0":
            assert float(row["confidence"]) >= threshold - 1e-4


def test_export_of_data_without_files_is_a_user_error(tmp_path, capsys):
    features = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", features)
    out = tmp_path / "run"
    assert main(["fit", "--data", f"features:{tmp_path / 'x.npy'}", "--clusters", "2", "--epochs", "1", "--batch-size", "30", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(out / "model.pt"), "--data", f"features:{tmp_path / 'x.npy'}", "--out", str(tmp_path / "p.csv"), "--export", str(tmp_path / "e")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--export needs image files" in err[0]
    assert main(["predict", "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "q.csv"), "--link"]) == 2


def test_images_of_another_size_and_colour_are_converted_with_a_note(trained, tmp_path, capsys):
    model, _ = trained
    folder = tmp_path / "rgb"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        img = rng.integers(0, 40, size=(12, 12, 3))
        img[:, 5:7] += 200
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB").save(folder / f"{i}.png")
    preds = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(model), "--data", f"folder:{folder}", "--out", str(preds), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "converted RGB images to grayscale" in out
    assert "resized to 8x8 (the size the model was trained at)" in out  # decoded at the model's size, not resized after
    assert len(read_rows(preds)) == 12


def test_predict_on_the_training_folder_gives_fits_assignments_exactly(tmp_path, capsys):
    # Photos larger than the model's input: fit decoded them at --image-size 12; predict must
    # decode them the same way (it used to decode at the default working resolution, 30, and then
    # resize, which moved every confidence a little).
    folder = tmp_path / "photos"
    rng = np.random.default_rng(4)
    for c in range(2):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(10):
            img = rng.integers(0, 60, size=(30, 40, 3))
            img[:, 10 + 15 * c : 20 + 15 * c] += 150
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"c{c}" / f"{i}.jpg", quality=90)
    run, preds = tmp_path / "run", tmp_path / "p.csv"
    assert main(["fit", "--data", f"folder:{folder}", "--clusters", "2", "--image-size", "12", "--epochs", "2", "--out", str(run), "--no-progress", "--device", "cpu", "--no-cache"]) == 0
    assert main(["predict", "--checkpoint", str(run), "--out", str(preds), "--device", "cpu", "--no-progress"]) == 0
    assert "resized images" not in capsys.readouterr().out
    fitted, predicted = read_rows(run / "assignments.csv"), read_rows(preds)
    assert [(r["path"], r["cluster"], r["confidence"]) for r in predicted] == [(r["path"], r["cluster"], r["confidence"]) for r in fitted]


def test_balanced_assignment_follows_the_prior_and_argmax_does_not():
    rng = np.random.default_rng(0)
    n, k = 300, 3
    # Every sample leans to cluster 0, but its second choice carries the real structure.
    second = np.repeat(np.arange(k), n // k)
    logits = rng.normal(0, 0.1, size=(n, k))
    logits[np.arange(n), second] += 1.0
    logits[:, 0] += 1.2
    proba = torch.softmax(torch.from_numpy(logits), dim=1).numpy().astype(np.float32)
    assert np.bincount(proba.argmax(1), minlength=k)[0] > 250
    balanced = balanced_assignment(proba, torch.full((k,), 1.0 / k))
    sizes = np.bincount(balanced, minlength=k)
    assert np.abs(sizes - n / k).max() <= 0.05 * n
    assert (balanced == second).mean() > 0.9
    skewed = balanced_assignment(proba, torch.tensor([0.6, 0.2, 0.2]))
    assert abs(np.bincount(skewed, minlength=k)[0] - 180) <= 15


def test_balanced_cli_prints_how_many_moved(trained, tmp_path, capsys):
    model, data = trained
    assert main(["predict", "--checkpoint", str(model), "--data", f"folder:{data}", "--out", str(tmp_path / "b.csv"), "--assign", "balanced", "--device", "cpu"]) == 0
    assert "balanced assignment:" in capsys.readouterr().out
    sizes = np.bincount([int(r["cluster"]) for r in read_rows(tmp_path / "b.csv")], minlength=3)
    assert sizes.min() >= 25  # 120 images, uniform prior: about 40 each


def test_balanced_eps_has_the_methods_name_and_keeps_its_former_one(trained, tmp_path, capsys):
    model, data = trained
    common = ["predict", "--checkpoint", str(model), "--data", f"folder:{data}", "--assign", "balanced", "--device", "cpu"]
    outputs = {}
    for flag in ("--sinkhorn-eps", "--eps"):
        out = tmp_path / f"{flag.strip('-')}.csv"
        assert main([*common, "--out", str(out), flag, "0.5"]) == 0
        outputs[flag] = [r["cluster"] for r in read_rows(out)]
    capsys.readouterr()
    assert outputs["--sinkhorn-eps"] == outputs["--eps"]


def test_no_progress_silences_the_prediction_and_export_bars(trained, tmp_path, capsys, monkeypatch):
    model, data = trained
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars show on a terminal only
    for quiet in (False, True):
        args = ["predict", "--checkpoint", str(model), "--data", f"folder:{data}", "--out", str(tmp_path / f"p{quiet}.csv"), "--export", str(tmp_path / f"e{quiet}"), "--device", "cpu"]
        assert main(args + ["--no-progress"] * quiet) == 0
        err = capsys.readouterr().err
        assert [bar in err for bar in ("predicting", "copying")] == [not quiet] * 2, err


@pytest.mark.parametrize("link", [False, True])
def test_export_keeps_every_image_when_file_names_repeat_across_folders(tmp_path, link):
    """Photos read from many folders repeat names (IMG_0001.jpg); a renamed copy must not land on a
    name another image already took: y/a.jpg, the image of index 2, is renamed a-2.jpg, which
    z/a-2.jpg took first."""
    paths = []
    for index, (folder, name) in enumerate([("z", "a-2.jpg"), ("x", "a.jpg"), ("y", "a.jpg"), ("w", "A.JPG")]):  # A.JPG: a.jpg on macOS and Windows
        path = tmp_path / "photos" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"image {index}")
        paths.append(str(path))
    export = tmp_path / "sorted"
    counts = export_images(paths, np.zeros(4, dtype=int), np.zeros(4, dtype=bool), export, 2, link=link, progress=False)
    assert counts == {"cluster_00": 4}
    written = sorted((export / "cluster_00").iterdir())
    assert sorted(p.read_text() for p in written) == ["image 0", "image 1", "image 2", "image 3"]
    assert len({p.name.lower() for p in written}) == 4  # distinct on a file system that ignores case



@pytest.mark.parametrize("link", [False, True])
def test_export_keeps_both_images_named_alike_in_composed_and_decomposed_unicode(tmp_path, link):
    """café.jpg composed (NFC) and decomposed (NFD, as macOS writes it) are two files here, one
    class since their folders are one (café twice), and one name on macOS: copied into one cluster
    folder there, the second overwrote the first (a link failed). The second is renamed."""
    paths = []
    for index, (folder, name) in enumerate([("caf\u00e9", "caf\u00e9.jpg"), ("cafe\u0301", "cafe\u0301.jpg")]):
        path = tmp_path / "photos" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"image {index}")
        paths.append(str(path))
    export = tmp_path / "sorted"
    assert export_images(paths, np.zeros(2, dtype=int), np.zeros(2, dtype=bool), export, 2, link=link, progress=False) == {"cluster_00": 2}
    written = sorted((export / "cluster_00").iterdir())
    assert sorted(p.read_text() for p in written) == ["image 0", "image 1"]
    assert len({unicodedata.normalize("NFC", p.name) for p in written}) == 2  # distinct where the forms are one name

def test_predict_on_unlabeled_data_does_not_speak_of_skipping_an_evaluation(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["fit", "--data", f"features:{tmp_path / 'x.npy'}", "-k", "2", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "run"), "--data", f"features:{tmp_path / 'x.npy'}", "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    said = capsys.readouterr()
    assert "evaluation skipped" not in said.out + said.err and "40 samples assigned" in said.out + said.err


def test_export_never_deletes_the_images_it_sorts_nor_files_it_did_not_write(trained, tmp_path):
    """Re-sorting an exported folder into itself with --overwrite deleted every image before
    copying (then crashed); a photo the user saved into a cluster folder was deleted too."""
    model, data = trained
    export = tmp_path / "sorted"
    assert main(["predict", "--checkpoint", str(model), "--data", f"folder:{data}", "--out", str(tmp_path / "a.csv"), "--export", str(export), "--no-progress"]) == 0
    exported = sorted(p.relative_to(export) for p in export.rglob("*") if p.is_file() and not p.name.startswith("."))
    mine = export / "cluster_00" / "my_only_copy.jpg"
    mine.parent.mkdir(exist_ok=True)
    mine.write_bytes(b"precious")
    # the export folder as the data: refused, nothing touched
    assert main(["predict", "--checkpoint", str(model), "--data", f"folder:{export}", "--out", str(tmp_path / "b.csv"), "--export", str(export), "--overwrite", "--no-progress"]) == 2
    assert sorted(p.relative_to(export) for p in export.rglob("*") if p.is_file() and not p.name.startswith(".") and p != mine) == exported
    # an export inside the data folder: refused (the next fit would read the copies)
    assert main(["predict", "--checkpoint", str(model), "--data", f"folder:{data}", "--out", str(tmp_path / "c.csv"), "--export", str(data / "sorted"), "--no-progress"]) == 2
    assert not (data / "sorted").exists()
    # --overwrite replaces what the export wrote and keeps the user's file
    assert main(["predict", "--checkpoint", str(model), "--data", f"folder:{data}", "--out", str(tmp_path / "d.csv"), "--export", str(export), "--overwrite", "--no-progress"]) == 0
    assert mine.read_bytes() == b"precious"
    # cluster folders with no record of an export are not otclust's to empty
    (export / ".otclust-export.json").unlink()
    assert main(["predict", "--checkpoint", str(model), "--data", f"folder:{data}", "--out", str(tmp_path / "e.csv"), "--export", str(export), "--overwrite", "--no-progress"]) == 2
    assert mine.read_bytes() == b"precious"

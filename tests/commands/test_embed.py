"""otclust embed, and fit / predict / the estimator with a frozen pretrained backbone: the cache
(embeddings + kNN graph) is filled once and reused, the backbone stays frozen, the checkpoint
names the weights by sha256 and predict runs new images through the same network or refuses."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import otclust.data.embeddings as embeddings_module
from otclust.cli import main
from otclust.models.pretrained import file_sha256, import_timm, load_extractor

TIMM = "timm:test_vit"
TV = "torchvision:mobilenet_v3_small"


@pytest.fixture
def count_embedding(monkeypatch):
    """How many images went through a backbone (embed_images wrapped with a counter)."""
    calls = []
    real = embeddings_module.embed_images

    def counted(extractor, data, *args, **kwargs):
        calls.append(len(data))
        return real(extractor, data, *args, **kwargs)

    monkeypatch.setattr(embeddings_module, "embed_images", counted)
    return calls


def fit_args(data, weights, out, backbone=TIMM, *extra):
    return ["fit", "--data", data, "--backbone", backbone, "--weights", str(weights), "--clusters", "3", "--epochs", "2", "--batch-size", "40", "--out", str(out), "--no-progress", "--device", "cpu", *extra]


def test_embed_writes_features_labels_and_the_knn_graph(blob_image_folder, random_weights, offline_caches, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    code = main(["embed", "--data", f"folder:{blob_image_folder}", "--backbone", TIMM, "--weights", str(random_weights[TIMM]), "--out", str(out), "--neighbors", "5", "--no-progress", "--device", "cpu"])
    assert code == 0
    features = np.load(out)
    assert features.shape == (120, 64) and features.dtype == np.float32
    assert np.load(tmp_path / "emb.labels.npy").tolist() == sorted(np.load(tmp_path / "emb.labels.npy").tolist())
    meta = json.loads((tmp_path / "emb.json").read_text())
    assert meta["backbone"] == TIMM and meta["weights_sha256"] == file_sha256(random_weights[TIMM]) and meta["images_per_second"] > 0
    # the kNN graph against scikit-learn's exact cosine neighbours (each image excluded from its own list)
    from sklearn.neighbors import NearestNeighbors

    expected = NearestNeighbors(n_neighbors=6, metric="cosine").fit(features).kneighbors(features, return_distance=False)[:, 1:]
    graph = np.load(tmp_path / "emb.knn.npy")
    assert graph.shape == (120, 5)
    # the same neighbours up to near-ties: the similarities of both lists agree (float64 reference)
    unit = features.astype(np.float64) / np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    rows = np.arange(120)[:, None]
    ours, theirs = (unit[rows] * unit[graph]).sum(-1), (unit[rows] * unit[expected]).sum(-1)
    assert np.allclose(ours, theirs, atol=1e-5)
    assert (graph != rows).all()
    assert "features:" in capsys.readouterr().out
    # the same embeddings when the features file is clustered as any features file
    assert main(["fit", "--data", f"features:{out}", "--clusters", "3", "--epochs", "1", "--batch-size", "40", "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]) == 0


def test_embed_refuses_to_replace_any_of_its_files_before_embedding(blob_image_folder, random_weights, offline_caches, tmp_path, count_embedding, capsys):
    """Only OUT.npy was checked: the user's OUT.labels.npy and OUT.json were replaced silently."""
    (tmp_path / "emb.labels.npy").write_bytes(b"the user's labels")
    (tmp_path / "emb.json").write_text("the user's notes")
    args = ["embed", "--data", f"folder:{blob_image_folder}", "--backbone", TIMM, "--weights", str(random_weights[TIMM]), "--out", str(tmp_path / "emb.npy"), "--no-progress", "--device", "cpu"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"otclust: error: {tmp_path / 'emb.labels.npy'}, {tmp_path / 'emb.json'} already exist: pass --overwrite or choose another --out"]
    assert count_embedding == []  # refused before any image went through the backbone
    assert (tmp_path / "emb.labels.npy").read_bytes() == b"the user's labels" and (tmp_path / "emb.json").read_text() == "the user's notes"
    assert not (tmp_path / "emb.npy").exists()
    # With --overwrite the set is replaced whole: a kNN graph of the earlier set, which this one
    # (--neighbors 0) does not rewrite, goes too rather than stay beside other features.
    (tmp_path / "emb.knn.npy").write_bytes(b"an earlier graph")
    assert main([*args, "--overwrite", "--neighbors", "0"]) == 0
    assert np.load(tmp_path / "emb.labels.npy").shape == (120,) and json.loads((tmp_path / "emb.json").read_text())["backbone"] == TIMM
    assert not (tmp_path / "emb.knn.npy").exists()


def test_embed_into_an_ordinary_file_is_refused_in_one_line(blob_image_folder, random_weights, offline_caches, tmp_path, count_embedding, capsys):
    """It used to embed every image, then end in FileExistsError."""
    (tmp_path / "afile").write_text("the user's")
    assert main(["embed", "--data", f"folder:{blob_image_folder}", "--backbone", TIMM, "--weights", str(random_weights[TIMM]), "--out", str(tmp_path / "afile" / "x.npy"), "--no-progress", "--device", "cpu"]) == 2
    assert count_embedding == []
    assert capsys.readouterr().err.strip() == f"otclust: error: cannot create the .npy file {tmp_path / 'afile' / 'x.npy'}: {tmp_path / 'afile'} is a file; choose another --out"


def test_fit_reuses_the_cache_and_predict_runs_new_images_through_the_same_backbone(blob_image_folder, random_weights, offline_caches, tmp_path, count_embedding, capsys):
    data = f"folder:{blob_image_folder}"
    weights = random_weights[TIMM]
    assert main(["embed", "--data", data, "--backbone", TIMM, "--weights", str(weights), "--no-progress", "--device", "cpu"]) == 0
    assert count_embedding == [120]
    before = file_sha256(weights)
    assert main(fit_args(data, weights, tmp_path / "run")) == 0
    assert count_embedding == [120], "fit embedded the data again instead of reading the cache"
    assert main(fit_args(data, weights, tmp_path / "run2", TIMM, "--seed", "1")) == 0
    assert count_embedding == [120]
    checkpoint = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    assert config["backbone"] == TIMM and config["weights_sha256"] == before and config["weights"] == str(weights.resolve())
    # frozen: the weights file is untouched and nothing of the backbone went into the checkpoint
    assert file_sha256(weights) == before
    assert not any(key.startswith(("blocks.", "patch_embed", "network.")) for key in checkpoint["model"])
    # CLOT trained on the cached kNN graph: the neighbour view came from the frozen space
    graph = np.load(next((offline_caches / "xdg" / "otclust" / "embeddings").glob("*.knn.npy")))
    assert np.array_equal(checkpoint["method_state"]["neighbor_index"].numpy(), graph[:, :20])
    # with the frozen stage's settings, measured at cluster-loss weight 0.3, not CLOT's own default 1.0
    assert config["params"]["n_heads"] == 5 and config["params"]["cluster_weight"] == 0.3

    # new images, another size and colour mode: embedded by the same network, then the head
    new = tmp_path / "new"
    new.mkdir()
    rng = np.random.default_rng(1)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, size=(15, 11, 3), dtype=np.uint8)).save(new / f"{i}.png")
    preds = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "model.pt"), "--data", f"folder:{new}", "--out", str(preds), "--device", "cpu"]) == 0
    assert count_embedding == [120, 7]
    rows = list(csv.DictReader(open(preds)))
    from otclust.data import load_dataset
    from otclust.engine import load_trained

    method, _ = load_trained(tmp_path / "run" / "model.pt", device="cpu")
    images = load_dataset(f"folder:{new}").data
    expected = method.predict_proba(load_extractor(TIMM, str(weights))(images)).argmax(1)
    assert [int(r["cluster"]) for r in rows] == expected.tolist()


def test_predict_refuses_other_weights_and_asks_for_moved_ones(blob_image_folder, random_weights, offline_caches, tmp_path, capsys):
    data = f"folder:{blob_image_folder}"
    weights = tmp_path / "w.pt"
    weights.write_bytes(random_weights[TIMM].read_bytes())
    assert main(fit_args(data, weights, tmp_path / "run")) == 0
    model = str(tmp_path / "run" / "model.pt")
    other = tmp_path / "other.pt"
    state = torch.load(weights, weights_only=True)
    state["cls_token"] = state["cls_token"] + 1.0
    torch.save(state, other)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", model, "--data", data, "--out", str(tmp_path / "p.csv"), "--weights", str(other), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert "is not the one this model was trained with" in error and len(error.splitlines()) == 1
    weights.rename(tmp_path / "moved.pt")
    assert main(["predict", "--checkpoint", model, "--data", data, "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 2
    assert "weights file not found" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", model, "--data", data, "--out", str(tmp_path / "p.csv"), "--weights", str(tmp_path / "moved.pt"), "--device", "cpu"]) == 0


def test_estimator_with_a_torchvision_backbone(blob_images, random_weights, offline_caches, tmp_path):
    from otclust import OTClust

    images, _ = blob_images
    model = OTClust(n_clusters=3, epochs=2, batch_size=40, device="cpu", backbone=TV, weights=str(random_weights[TV])).fit(images)
    assert model.config_.weights_sha256 == file_sha256(random_weights[TV])
    assert model.model_.spec.feature_dim == 1024
    new = np.random.default_rng(2).integers(0, 256, size=(9, 16, 16, 3), dtype=np.uint8)
    labels = model.predict(new)
    model.save(tmp_path / "m.pt")
    again = OTClust.load(tmp_path / "m.pt", device="cpu")
    assert np.array_equal(again.predict(new), labels)
    assert np.array_equal(again.predict(images), model.labels_)


def test_unknown_backbone_and_weights_without_a_pretrained_backbone_are_one_line_errors(tmp_path, capsys):
    assert main(["fit", "--backbone", "resnet50", "--out", str(tmp_path / "a")]) == 2
    assert "unknown backbone 'resnet50'" in capsys.readouterr().err
    assert main(["fit", "--backbone", "small-cnn", "--weights", "x.pt", "--out", str(tmp_path / "b")]) == 2
    assert "--weights is for a pretrained backbone" in capsys.readouterr().err
    assert main(["embed", "--data", "digits", "--backbone", "resnet18"]) == 2
    assert main(["embed", "--data", "features:x.npy", "--backbone", TIMM, "--out", str(tmp_path / "x.txt")]) == 2


def test_compare_clusters_the_embeddings_with_every_method_embedding_once(blob_image_folder, random_weights, offline_caches, tmp_path, count_embedding):
    out = tmp_path / "cmp"
    args = ["compare", "--data", f"folder:{blob_image_folder}", "--methods", "kmeans,clot", "--seeds", "1", "--epochs", "1", "--batch-size", "40", "--clusters", "3"]
    assert main([*args, "--backbone", TIMM, "--weights", str(random_weights[TIMM]), "--device", "cpu", "--out", str(out)]) == 0
    assert count_embedding == [120]
    for method in ("kmeans", "clot"):
        config = yaml.safe_load((out / method / "seed0" / "config.yaml").read_text())
        assert config["backbone"] == TIMM and config["weights_sha256"] == file_sha256(random_weights[TIMM])


@pytest.fixture
def photo_folder(tmp_path):
    """Six smooth colour 'photos' of 260x200 in two class folders: larger than any backbone's input."""
    rng = np.random.default_rng(3)
    for i in range(6):
        (tmp_path / "photos" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8))
        coarse.resize((260, 200), Image.BICUBIC).save(tmp_path / "photos" / f"c{i % 2}" / f"{i}.png")
    return tmp_path / "photos"


def test_photos_are_decoded_at_the_backbones_own_resolution_by_embed_fit_and_predict(photo_folder, random_weights, offline_caches, tmp_path, count_embedding):
    """Pretrained backbones had folders decoded at the small CNN's 64 px, scaled up to the network's
    input by the library's preprocessing: cosine about 0.9 with the library's own pipeline on the
    full-size photos. Now timm:test_vit's 168 px (160 / crop_pct 0.95), and embed,
    fit and predict decode alike: one embedding, then the cache."""
    timm = import_timm()
    data, weights = f"folder:{photo_folder}", random_weights[TIMM]
    out = tmp_path / "e.npy"
    assert main(["embed", "--data", data, "--backbone", TIMM, "--weights", str(weights), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["image_shape"] == [3, 168, 168]
    extractor = load_extractor(TIMM, str(weights))
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=extractor.network))
    files = sorted(photo_folder.glob("*/*.png"))
    with torch.no_grad():
        expected = extractor.network(torch.stack([transform(Image.open(f).convert("RGB")) for f in files])).numpy()
    got = np.load(out)
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.99, cosine
    assert main(fit_args(data, weights, tmp_path / "run")) == 0
    assert main(["predict", "--checkpoint", str(tmp_path / "run"), "--data", data, "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 0
    assert count_embedding == [6], "fit or predict decoded the photos otherwise than embed, and embedded them again"


def test_embed_prints_the_data_loaders_notes(photo_folder, random_weights, offline_caches, tmp_path, capsys):
    """embed said nothing of skipped or ignored files, nor of the working resolution; fit and predict print them."""
    (photo_folder / "c0" / "bad.png").write_text("not an image")
    (photo_folder / "readme.txt").write_text("notes")
    assert main(["embed", "--data", f"folder:{photo_folder}", "--backbone", TIMM, "--weights", str(random_weights[TIMM]), "--no-progress", "--device", "cpu"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert any(line.startswith("note: skipped 1 of 7 image files that could not be decoded: bad.png") for line in notes), notes
    assert any(line.startswith("note: ignored 1 file without an image extension (readme.txt)") for line in notes), notes
    assert any(line.startswith("note: working resolution 168x168: what timm:test_vit's preprocessing resizes to before its 160 px centre crop") for line in notes), notes


def test_embed_out_after_a_cache_hit_names_the_data_asked_for(photo_folder, random_weights, offline_caches, tmp_path, count_embedding):
    """The cache is keyed by the images' bytes: a copy of the folder reused the first folder's
    record, and E.json named the first folder embedded, not the one asked for."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(photo_folder, copy)
    args = ["--backbone", TIMM, "--weights", str(random_weights[TIMM]), "--no-progress", "--device", "cpu", "--neighbors", "3"]
    assert main(["embed", "--data", f"folder:{photo_folder}", *args]) == 0
    assert main(["embed", "--data", f"folder:{copy}", "--out", str(tmp_path / "e.npy"), *args]) == 0
    assert count_embedding == [6]  # the second one read the cache
    assert json.loads((tmp_path / "e.json").read_text())["data"] == f"folder:{copy.resolve()}"
    # the same when only the kNN graph is computed again (a wider one than cached)
    assert main(["embed", "--data", f"folder:{copy}", "--out", str(tmp_path / "w.npy"), *args[:-2], "--neighbors", "4"]) == 0
    assert count_embedding == [6] and json.loads((tmp_path / "w.json").read_text())["data"] == f"folder:{copy.resolve()}"


def test_weights_holding_nan_are_refused_at_embedding_time_and_nothing_is_cached(photo_folder, random_weights, offline_caches, tmp_path, capsys):
    """A NaN in one normalisation scale made every embedding NaN: embed exited 0, cached them with a
    meaningless kNN graph, and fit then blamed divergence and a too large --lr."""
    state = torch.load(random_weights[TIMM], weights_only=True)
    state["norm.weight"][0] = float("nan")
    damaged = tmp_path / "nan.pt"
    torch.save(state, damaged)
    data, out = f"folder:{photo_folder}", tmp_path / "e.npy"
    assert main(["embed", "--data", data, "--backbone", TIMM, "--weights", str(damaged), "--out", str(out), "--no-progress", "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"otclust: error: the embeddings of 6 of 6 images by {TIMM} are NaN or infinite: the weights file {damaged.resolve()} "
        "is likely damaged or not for this network (nothing was cached)"
    )
    assert not list((offline_caches / "xdg" / "otclust" / "embeddings").glob("*")) and not list(tmp_path.glob("e.*"))
    assert main(fit_args(data, damaged, tmp_path / "run")) == 2
    assert "are NaN or infinite: the weights file" in capsys.readouterr().err
    # an entry of NaN embeddings cached by an earlier otclust is not reused: embedded again, refused again
    from otclust.data import load_dataset

    extractor = load_extractor(TIMM, str(damaged))
    key = embeddings_module.cache_key(load_dataset(data, backbone=TIMM).data, extractor)
    features_path, _, meta_path = embeddings_module._cache_paths(key)
    embeddings_module._save_npy(features_path, np.full((6, 64), np.nan, dtype=np.float32))
    meta_path.write_text(json.dumps({"key": key, "data": data}))
    assert main(["embed", "--data", data, "--backbone", TIMM, "--weights", str(damaged), "--neighbors", "0", "--no-progress", "--device", "cpu"]) == 2
    assert "are NaN or infinite" in capsys.readouterr().err


def test_embed_recommends_the_fit_that_reads_its_cache_with_the_frozen_feature_settings(photo_folder, random_weights, offline_caches, tmp_path, count_embedding, capsys):
    """embed recommended 'otclust fit --data features:E.npy', which reads E.npy as plain vectors:
    no kNN graph, CLOT's ordinary settings and budget, unlike the --backbone run docs/pretrained.md
    measured. The command it prints now is that run, and reads the cache."""
    import shlex

    args = ["--data", f"folder:{photo_folder}", "--split", "all", "--backbone", TIMM, "--weights", str(random_weights[TIMM]), "--device", "cpu", "--no-progress"]
    assert main(["embed", *args, "--out", str(tmp_path / "e.npy")]) == 0
    lines = capsys.readouterr().out.splitlines()
    command = next(line for line in lines if line.startswith("cluster them with: ")).removeprefix("cluster them with: ").split("    (")[0]
    assert command == shlex.join(["otclust", "fit", *args[:6], "--weights", str(random_weights[TIMM])]) + " --clusters K"
    assert "clusters them as plain feature vectors: no kNN graph" in lines[-1]
    words = shlex.split(command.replace("--clusters K", "--clusters 2"))[1:]
    assert main([*words, "--epochs", "1", "--batch-size", "6", "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]) == 0
    assert count_embedding == [6]  # read from the cache
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert {key: config["params"][key] for key in ("neighbors", "neighbor_source", "n_heads", "cluster_weight")} == {"neighbors": 20, "neighbor_source": "input", "n_heads": 5, "cluster_weight": 0.3}

"""The recipes in configs/: every one loads and names only settings otclust knows, and every GPU
recipe (CIFAR-10, CIFAR-100-20, STL-10, ImageNet-10 for CLOT and DRC) runs.

The GPU recipes have never been trained on a GPU here, so their scores and their speed are
unknown; each has run only this test's two steps on CUDA, once (an H100, 2026-12-05,
docs/performance.md). What a CPU can check is that they run: each recipe is trained with
`otclust fit --config RECIPE` as a GPU user would call it, on a few images written in its data set's real on-disk format (CIFAR pickles, STL-10
binaries, a folder of JPEGs), with only the data path, the length (--steps 2), the batch size and
the device overridden. That parses the recipe, checks each parameter name against the method,
builds its backbone at the data's resolution, takes two optimizer steps, runs the read-out and
writes one prediction per image.

On a CUDA machine, `OTCLUST_TEST_DEVICE=cuda pytest tests/test_gpu_recipes.py` runs the same two
steps there, mixed precision included (benchmarks/cuda_session.sh does).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import yaml

from otclust.cli import main
from otclust.config import CONFIG_FIELDS, FitConfig, load_config_file
from otclust.data import parse_spec
from otclust.data.augment import AugmentConfig, augment_config_from_dict
from otclust.methods import available_methods, get_method_class
from otclust.methods.base import build_params
from otclust.readout.stage import ReadoutParams

from fake_datasets import write_cifar10, write_cifar100, write_jpeg_class_folders, write_stl10

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_RECIPES = sorted(CONFIGS.glob("*.yaml"))
# The recipes issue 19 asks for; a GPU recipe is one whose header says so (checked below).
EXPECTED_GPU_RECIPES = {f"{method}-{data}" for method in ("clot", "drc") for data in ("cifar10", "cifar100-20", "stl10", "imagenet10")}
GPU_RECIPES = sorted(p for p in ALL_RECIPES if "GPU recipe" in p.read_text())
DEVICE = os.environ.get("OTCLUST_TEST_DEVICE", "cpu")


def header(path: Path) -> str:
    """The recipe's leading comment block, as one line of text."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


# --------------------------------------------------------------------------------------------
# Every recipe
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: p.stem)
def test_recipe_names_only_known_settings(path):
    """Top-level keys are FitConfig fields, params the method's Params, augment the augmentation's
    and readout_params the read-out's settings, each of the right type; the whole is a valid run."""
    values = load_config_file(path)  # unknown top-level keys are an error here
    assert set(values) <= CONFIG_FIELDS
    method = values.get("method", FitConfig.method)
    assert method in available_methods(), f"{path.name}: unknown method {method!r}"
    build_params(get_method_class(method).Params, values.get("params") or {}, method)
    unknown = set(values.get("augment") or {}) - {f.name for f in dataclasses.fields(AugmentConfig)}
    assert not unknown, f"{path.name}: unknown augment settings {sorted(unknown)}"
    augment_config_from_dict(values.get("augment"), 3, (32, 32))
    readout = values.get("readout_params") or {}
    assert set(readout) <= {f.name for f in dataclasses.fields(ReadoutParams)}, f"{path.name}: {sorted(readout)}"
    ReadoutParams(**readout).validate()
    parse_spec(values.get("data", FitConfig.data))
    config = dict(get_method_class(method).default_config)
    config.update(values)
    FitConfig(**config).validate()
    assert header(path), f"{path.name} has no header comment saying what it follows"


def test_the_gpu_recipes_are_there_and_say_what_they_are():
    assert {p.stem for p in GPU_RECIPES} == EXPECTED_GPU_RECIPES
    for path in GPU_RECIPES:
        text = header(path)
        for statement in ("NOT run on a GPU by this project", "not tuned", "expected time unknown", "Where each line comes from"):
            assert statement in text, f"{path.name}: the header must say '{statement}'"
        values = load_config_file(path)
        assert values["backbone"] in ("resnet18", "resnet34") and values["epochs"] == 500 and values["batch_size"] == 256


# --------------------------------------------------------------------------------------------
# Each GPU recipe, run for two steps on its data set's real file format
# --------------------------------------------------------------------------------------------


def write_fake(source: str, clusters: int, root: Path) -> tuple[str, int, int]:
    """A few images of `source` in its real format under root: (path for --data, N, a batch size
    giving 2 steps an epoch). N is the least otclust accepts, the number of clusters (a bit more
    for CIFAR, where it is cheap): a ResNet-34 at 96 px costs about a second per image on one core."""
    if source == "cifar10":
        write_cifar10(root, per_batch=2, n_test=1)  # 5 batches x 2 + 1
        return str(root), 11, 5
    if source == "cifar100-20":
        write_cifar100(root, train_coarse=list(range(clusters)), test_coarse=[3])
        return str(root), clusters + 1, clusters // 2
    if source == "stl10":
        write_stl10(root, train_labels=tuple(range(1, clusters - 1)), test_labels=(3, 7), n_unlabeled=1)
        return str(root), clusters, clusters // 2
    if source == "folder":  # ImageNet-10 as unpacked: a folder per class, photos larger than 96 px
        write_jpeg_class_folders(root / "imagenet-10", n_classes=clusters, per_class=1, size=(100, 120))
        return str(root / "imagenet-10"), clusters, clusters // 2
    raise AssertionError(f"no fake files for data set '{source}': add a writer to tests/fake_datasets.py")


def fit_recipe(recipe: Path, data: str, batch_size: int, out: Path) -> int:
    return main(["fit", "--config", str(recipe), "--data", data, "--steps", "2", "--batch-size", str(batch_size), "--device", DEVICE, "--out", str(out), "--no-progress"])


@pytest.fixture
def private_caches(tmp_path, monkeypatch):
    """Downloads and decoded images go under tmp_path, never to the user's caches."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("OTCLUST_CACHE", str(tmp_path / "decoded"))


@pytest.fixture
def run_folder(tmp_path):
    """The run's folder, deleted afterwards: a ResNet-34 checkpoint with its Adam state is 260 MB,
    and pytest keeps the temporary folders of its last three sessions."""
    out = tmp_path / "run"
    yield out
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.filterwarnings("ignore:The number of unique classes:UserWarning")  # 20 clusters of 21 images
@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: p.stem)
def test_gpu_recipe_trains_two_steps_on_its_file_format(recipe, tmp_path, run_folder, capsys, private_caches):
    from otclust.engine import load_trained
    from otclust.models.backbones import ResNetCifar

    values = load_config_file(recipe)
    source, _, _ = parse_spec(values["data"])
    clusters = values["clusters"]
    path, n, batch_size = write_fake(source, clusters, tmp_path / "data")
    out = run_folder
    code = fit_recipe(recipe, f"{source}:{path}", batch_size, out)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "training 1 epoch of 2 steps" in captured.err + captured.out

    # The run is the recipe's: only data, length, batch size and device differ.
    ran = yaml.safe_load((out / "config.yaml").read_text())
    for key, value in values.items():
        if key in ("data", "epochs", "batch_size"):
            continue
        if isinstance(value, dict):
            assert {k: ran[key][k] for k in value} == value, key
        else:
            assert ran[key] == value, key
    assert ran["batch_size"] == batch_size and ran["device"] == DEVICE and ran["epochs"] == 1

    # The backbone named, at the data's resolution.
    method, _ = load_trained(out / "model.pt", device="cpu")
    depth = {"resnet18": 8, "resnet34": 16}[values["backbone"]]
    assert isinstance(method.backbone, ResNetCifar) and len(method.backbone.layers) == depth
    size = values.get("image_size") or {"cifar10": 32, "cifar100-20": 32, "stl10": 96}[source]
    assert method.spec.image_size == (size, size) and method.spec.channels == 3

    # One prediction per image, into one of the K clusters.
    with open(out / "assignments.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    assert all(0 <= int(row["cluster"]) < clusters for row in rows)


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"params": {"no_such_parameter": 1}}, "unknown parameter"),
        ({"backbone": "resnet50"}, "unknown backbone"),
        ({"no_such_setting": 1}, "unknown setting"),
    ],
)
def test_a_broken_recipe_fails_the_check(change, fragment, tmp_path, capsys, private_caches):
    """The check above can fail: a recipe with an unknown name stops before any training."""
    recipe = tmp_path / "broken.yaml"
    values = load_config_file(CONFIGS / "drc-cifar10.yaml")
    for key, value in change.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    recipe.write_text(yaml.safe_dump(values))
    path, _, batch_size = write_fake("cifar10", 10, tmp_path / "data")
    assert fit_recipe(recipe, f"cifar10:{path}", batch_size, tmp_path / "run") == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.pt").exists()

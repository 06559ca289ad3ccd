import os

from hypothesis import settings

# CI replays a fixed set of examples (a red build is then reproducible); locally hypothesis keeps
# exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

import numpy as np
import pytest
import torch

# Two cores run the suite: one thread per test process keeps timings stable and small.
torch.set_num_threads(1)


def draw_blob_images(n_per: int = 40, size: int = 8, seed: int = 0):
    """Three visually distinct classes of small grayscale images (vertical bar, horizontal bar,
    two dots) on noise; returns (uint8 images N x size x size, labels)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(3):
        for _ in range(n_per):
            img = rng.integers(0, 40, size=(size, size))
            if label == 0:
                img[:, 3:5] += 200
            elif label == 1:
                img[3:5, :] += 200
            else:
                img[1:3, 1:3] += 200
                img[5:7, 5:7] += 200
            images.append(np.clip(img, 0, 255))
            labels.append(label)
    return np.array(images, dtype=np.uint8), np.array(labels)


def draw_stripe_images(n_per: int = 60, size: int = 12, period: float = 5.0, seed: int = 0, patterns=("vertical", "horizontal", "diagonal")):
    """Three classes of grayscale stripes (vertical, horizontal, diagonal; or `patterns` from
    those and "rings") at a random phase, amplitude and background level, with pixel noise;
    returns (uint8 images N x size x size, labels).

    The class is the orientation, which survives every shift, brightness and contrast change; the
    raw pixels mostly show the phase and the brightness, so k-means on pixels is near chance
    while a network that learns what its augmentations leave unchanged separates the classes.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    centre = (size - 1) / 2
    coordinates = {"vertical": cols, "horizontal": rows, "diagonal": rows + cols, "rings": np.hypot(rows - centre, cols - centre)}
    images, labels = [], []
    for label, pattern in enumerate(patterns):
        for _ in range(n_per):
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * coordinates[pattern] / period + rng.uniform(0, 2 * np.pi))
            image = rng.uniform(0, 50) + rng.uniform(60, 200) * wave + rng.normal(0, 8, size=(size, size))
            images.append(np.clip(image, 0, 255))
            labels.append(label)
    return np.array(images, dtype=np.uint8), np.array(labels)


def mean_head_acc(dataset, method: str, lr: float, epochs: int, seeds: int, params=None) -> float:
    """Mean ACC, over seeds 0..seeds-1, of `method` on `dataset` predicted by its own head: for
    end-to-end tests of methods whose single seed varies too much to decide."""
    from otclust.config import FitConfig
    from otclust.engine import Trainer

    accs = []
    for seed in range(seeds):
        config = FitConfig(method=method, clusters=3, epochs=epochs, batch_size=20, lr=lr, seed=seed, eval_every=epochs, readout="head", params=params or {})
        accs.append(Trainer(config, progress=False, log=lambda message: None).fit(dataset).metrics["acc"])
    return float(np.mean(accs))


@pytest.fixture(scope="session")
def stripe_images():
    """draw_stripe_images and the ACC of k-means (10 restarts) on their raw pixels."""
    from sklearn.cluster import KMeans

    from otclust.metrics import cluster_accuracy

    images, labels = draw_stripe_images()
    pixels = images.reshape(len(images), -1).astype(np.float64)
    pixel_acc = cluster_accuracy(labels, KMeans(3, n_init=10, random_state=0).fit_predict(pixels))
    return images, labels, pixel_acc


@pytest.fixture
def stripes(stripe_images):
    """The stripe images as a labelled ImageDataset, and the pixel k-means ACC to beat."""
    from otclust.estimator import dataset_from_array

    images, labels, pixel_acc = stripe_images
    dataset = dataset_from_array(images)
    dataset.labels = labels
    return dataset, pixel_acc


@pytest.fixture
def blob_images():
    return draw_blob_images()


@pytest.fixture(scope="session")
def blob_image_folder(tmp_path_factory):
    """The blob images as PNG files in one subfolder per class (folder:PATH data with labels)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("blob-images")
    images, labels = draw_blob_images()
    for name in ("bars", "stripes", "dots"):
        (root / name).mkdir()
    counts = [0, 0, 0]
    for image, label in zip(images, labels):
        name = ("bars", "stripes", "dots")[label]
        Image.fromarray(image).save(root / name / f"{counts[label]}.png")
        counts[label] += 1
    return root


@pytest.fixture
def blobs(blob_images):
    """blob_images as a labelled ImageDataset, ready for a Trainer."""
    from otclust.estimator import dataset_from_array

    images, labels = blob_images
    dataset = dataset_from_array(images)
    dataset.labels = labels
    return dataset


@pytest.fixture
def run_interrupted_and_resumed(tmp_path):
    """Train `config` straight through, and again interrupted after `stop_after` epochs then
    resumed from its checkpoint; returns (straight, resumed) FitResults for comparison."""
    from otclust.engine import Trainer
    from otclust.runs import prepare_output_folder

    def quiet(_message):
        pass

    def run(config, dataset, stop_after: int = 2):
        straight = Trainer(config, out_dir=prepare_output_folder(tmp_path / "straight"), progress=False, log=quiet).fit(dataset)
        out = prepare_output_folder(tmp_path / "interrupted")
        trainer = Trainer(config, out_dir=out, progress=False, log=quiet)
        trainer.checkpoint_every_seconds = 0  # a checkpoint after every epoch, the interrupted one's included
        original, done = trainer._train_one_epoch, {"epochs": 0}

        def interrupt(*args, **kwargs):
            if done["epochs"] == stop_after:
                raise KeyboardInterrupt
            done["epochs"] += 1
            return original(*args, **kwargs)

        trainer._train_one_epoch = interrupt
        with pytest.raises(KeyboardInterrupt):
            trainer.fit(dataset)
        resumed = Trainer(config, out_dir=prepare_output_folder(out, resume=True), progress=False, log=quiet).fit(dataset, resume=True)
        return straight, resumed

    return run


# --- pretrained backbones (the 'pretrained' extra): random weights, nothing downloaded ------------


@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    """otclust's, torch hub's and Hugging Face's caches empty under tmp_path, and the network
    refused: a test that tried to download anything fails."""
    for variable, sub in (("XDG_CACHE_HOME", "xdg"), ("TORCH_HOME", "torch"), ("HF_HOME", "hf")):
        monkeypatch.setenv(variable, str(tmp_path / sub))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    import socket

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tmp_path


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    """{backbone: weights file} for a tiny timm ViT and torchvision's MobileNetV3-small, random."""
    from otclust.models.pretrained import import_timm, import_torchvision

    timm = import_timm()
    import_torchvision()
    from torchvision.models import get_model

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    paths = {"timm:test_vit": root / "test_vit.pt", "torchvision:mobilenet_v3_small": root / "mobilenet_v3_small.pt"}
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), paths["timm:test_vit"])
    torch.save(get_model("mobilenet_v3_small", weights=None).state_dict(), paths["torchvision:mobilenet_v3_small"])
    return paths

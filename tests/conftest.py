import numpy as np
import pytest
import torch

# Two cores run the suite: one thread per test process keeps timings stable and small.
torch.set_num_threads(1)


@pytest.fixture
def blob_images():
    """Three visually distinct classes of 8x8 grayscale images (bars, dots, blank-ish) with noise."""
    rng = np.random.default_rng(0)
    n_per = 40
    images, labels = [], []
    for label in range(3):
        for _ in range(n_per):
            img = rng.integers(0, 40, size=(8, 8))
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

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

import numpy as np
import pytest
import torch

from otclust.config import FitConfig
from otclust.engine import Trainer
from otclust.methods.base import InputSpec
from otclust.methods.sela import Sela, SelaParams
from otclust.ot import sinkhorn


def quiet(message):
    pass


def test_sela_few_steps_loss_goes_down_and_no_collapse(blobs):
    config = FitConfig(method="sela", clusters=3, epochs=6, batch_size=40, lr=3e-3, seed=0, eval_every=6, params={"label_updates": 3, "n_heads": 2})
    result = Trainer(config, progress=False, log=quiet).fit(blobs)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert len(np.unique(result.labels)) == 3
    assert result.metrics["acc"] > 0.6


def test_whole_data_labels_are_balanced_and_equal_a_direct_sinkhorn(blobs):
    torch.manual_seed(0)
    spec = InputSpec.from_dataset(blobs)
    # Chunks of 32 images: the labelling pass must not depend on holding all data at once.
    method = Sela(3, spec, SelaParams(lam=10, n_heads=2, label_batch_size=32, sinkhorn_tol=1e-4, sinkhorn_iters=5000))
    method.update_labels(blobs.data)
    assert method.labels.shape == (2, 120)
    method.eval()
    with torch.no_grad():
        all_logits = method.cluster_head(method.backbone(method.standardize(blobs.data)))
    for head, logits in enumerate(all_logits):
        log_p = torch.log_softmax(logits, dim=1)
        direct = sinkhorn(log_p, eps=1 / 10, b=torch.full((3,), 1 / 3), n_iters=5000, tol=1e-4).plan.argmax(1)
        assert torch.equal(method.labels[head], direct)
        counts = torch.bincount(method.labels[head], minlength=3)
        assert counts.min() >= 30 and counts.max() <= 50  # 40 each under the equipartition


def test_label_updates_are_spread_over_the_epochs():
    spec = InputSpec(n_samples=10, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = Sela(2, spec, SelaParams(label_updates=4))
    assert method.update_epochs(10) == [0, 2, 5, 7]
    assert method.update_epochs(3) == [0, 1, 2]  # at most one per epoch
    # Before the first update the labels are a random balanced assignment.
    assert torch.equal(torch.bincount(method.labels[0]), torch.tensor([5, 5]))


def test_resume_restores_the_labels_and_matches_an_uninterrupted_run(run_interrupted_and_resumed, blobs):
    config = FitConfig(method="sela", clusters=3, epochs=3, batch_size=40, seed=1, params={"label_updates": 2})
    straight, resumed = run_interrupted_and_resumed(config, blobs)
    assert torch.equal(resumed.method.labels.cpu(), straight.method.labels.cpu())
    np.testing.assert_allclose(resumed.proba, straight.proba, atol=1e-4)

import numpy as np
import pytest
import torch

from otclust.config import FitConfig
from otclust.engine import Trainer
from otclust.errors import UserError
from otclust.methods.base import InputSpec
from otclust.methods.deepercluster import DeeperCluster, DeeperClusterParams, rotate_batch


def quiet(message):
    pass


def test_deepercluster_few_steps_loss_goes_down_and_no_collapse(blobs):
    config = FitConfig(method="deepercluster", clusters=3, epochs=6, batch_size=20, lr=3e-3, lr_schedule="constant", seed=0, eval_every=6, params={"pca_dim": 4})
    result = Trainer(config, progress=False, log=quiet).fit(blobs)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.history[-1]["loss_super"] < np.log(4)  # the rotations are being learned
    assert len(np.unique(result.labels)) == 3
    assert result.metrics["acc"] > 0.6


def test_rotate_batch_turns_each_image_by_its_own_quarter_turns():
    images = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4).repeat(4, 1, 1, 1)
    rotations = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = rotate_batch(images, rotations)
    for i, r in enumerate(rotations.tolist()):
        assert torch.equal(out[i], torch.rot90(images[i], r, dims=(1, 2)))


def test_hierarchy_targets_and_heads(blob_images):
    images, _ = blob_images
    data = torch.from_numpy(images[:, None])
    spec = InputSpec(n_samples=120, channels=1, image_size=(8, 8), mean=[0.2], std=[0.3])
    torch.manual_seed(0)
    method = DeeperCluster(3, spec, DeeperClusterParams(super_clusters=2, kmeans_clusters=6, pca_dim=4))
    assert (method.n_super, method.k_sub) == (8, 3)  # 4 rotations x 2 groups; 6 / 2 sub-clusters each
    method.fit_pca(torch.randn(120, method.backbone.out_dim))
    x = torch.nn.functional.normalize(torch.randn(120, 4), dim=1)
    groups, subclusters = method.hierarchical_kmeans(x)
    assert set(groups.tolist()) == {0, 1} and subclusters.max() < 3
    for g in (0, 1):  # every group is split into its own sub-clusters, none empty
        assert len(torch.unique(subclusters[groups == g])) == 3
    method.groups, method.subclusters = groups, subclusters
    parts = method.training_step(data[:16], torch.arange(16))
    assert torch.isfinite(parts["loss"]) and parts["loss"] == parts["super"] + parts["sub"]
    with pytest.raises(UserError, match="square"):
        DeeperCluster(3, InputSpec(n_samples=120, channels=1, image_size=(8, 6), mean=[0.2], std=[0.3]), DeeperClusterParams())


def test_resume_matches_an_uninterrupted_run(run_interrupted_and_resumed, blobs):
    from otclust.runs import prepare_output_folder

    config = FitConfig(method="deepercluster", clusters=3, epochs=3, batch_size=40, seed=1, params={"pca_dim": 4, "reclusterings": 2})
    straight, resumed = run_interrupted_and_resumed(config, blobs)
    assert torch.equal(resumed.method.subclusters.cpu(), straight.method.subclusters.cpu())
    np.testing.assert_allclose(resumed.proba, straight.proba, atol=1e-4)

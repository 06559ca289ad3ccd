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


def test_sela_beats_pixel_kmeans_where_only_learned_invariances_separate_the_classes(stripes):
    dataset, pixel_acc = stripes
    assert pixel_acc < 0.45  # the classes are not in the raw pixel geometry
    config = FitConfig(method="sela", clusters=3, epochs=30, batch_size=60, lr=3e-3, seed=0, eval_every=30, params={"label_updates": 10})
    result = Trainer(config, progress=False, log=quiet).fit(dataset)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert len(np.unique(result.labels)) == 3
    # 0.56-0.69 on seeds 0-3 when this was written: a modest margin, but labels that are never
    # refreshed (the random initial ones) or a collapsed labelling stay near 1/3.
    assert result.metrics["acc"] >= pixel_acc + 0.15


def test_whole_data_labels_are_balanced_and_equal_a_direct_sinkhorn(blobs):
    torch.manual_seed(0)
    spec = InputSpec.from_dataset(blobs)
    # Chunks of 32 images: the labelling pass must not depend on holding all data at once.
    method = Sela(3, spec, SelaParams(sinkhorn_eps=0.1, n_heads=2, label_batch_size=32, sinkhorn_tol=1e-4, sinkhorn_iters=5000))
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


def test_beyond_the_dense_limit_labels_come_from_8_bit_codes_and_training_works(blobs):
    params = {"label_updates": 3, "n_heads": 2, "dense_label_limit_gb": 1e-9}
    config = FitConfig(method="sela", clusters=3, epochs=6, batch_size=40, lr=3e-3, seed=0, eval_every=6, params=params)
    result = Trainer(config, progress=False, log=quiet).fit(blobs)
    method = result.method
    assert [solve["path"] for solve in method.last_label_solve] == ["quantized", "quantized"]
    assert all(solve["error"] <= method.params.sinkhorn_tol and solve["floor_mass"] < 1e-3 for solve in method.last_label_solve)
    for head in range(2):
        counts = torch.bincount(method.labels[head].cpu(), minlength=3)
        assert counts.min() >= 30 and counts.max() <= 50  # 40 each under the equipartition
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.metrics["acc"] > 0.6
    assert method.method_state()["label_log_v"].shape == (2, 3)


def test_dense_and_quantized_paths_give_the_same_labels(blobs):
    torch.manual_seed(0)
    spec = InputSpec.from_dataset(blobs)
    method = Sela(3, spec, SelaParams(sinkhorn_eps=0.1, n_heads=2, label_batch_size=32, sinkhorn_tol=1e-4, sinkhorn_iters=5000))
    method.update_labels(blobs.data)
    dense = method.labels.clone()
    assert [solve["path"] for solve in method.last_label_solve] == ["dense", "dense"]
    method.params.dense_label_limit_gb = 1e-9
    method.update_labels(blobs.data)
    assert [solve["path"] for solve in method.last_label_solve] == ["quantized", "quantized"]
    assert torch.equal(method.labels, dense)


def test_relaxed_sizes_use_the_semi_relaxed_solver_and_are_refused_by_the_8_bit_path(blobs):
    from otclust.errors import UserError
    from otclust.ot import sinkhorn_semi_relaxed

    torch.manual_seed(0)
    spec = InputSpec.from_dataset(blobs)
    method = Sela(3, spec, SelaParams(sinkhorn_eps=0.1, label_batch_size=32, sinkhorn_tol=1e-6, sinkhorn_iters=5000))
    method.set_cluster_prior("uniform", None, size_penalty=1.0)
    method.update_labels(blobs.data)
    method.eval()
    with torch.no_grad():
        log_p = torch.log_softmax(method.cluster_head(method.backbone(method.standardize(blobs.data)))[0], dim=1)
    direct = sinkhorn_semi_relaxed(log_p, eps=1 / 10, tau=1.0, tol=1e-6, n_iters=5000).plan.argmax(1)
    assert torch.equal(method.labels[0], direct)
    method.params.dense_label_limit_gb = 1e-9
    with pytest.raises(UserError, match="auto:TAU"):
        method.update_labels(blobs.data)

import numpy as np
import pytest
import torch

from otclust.config import FitConfig
from otclust.engine import Trainer
from otclust.estimator import dataset_from_array
from otclust.methods.clot import Clot, ClotParams


def test_pseudo_labels_are_balanced_and_follow_the_predictions():
    from otclust.methods.base import InputSpec

    spec = InputSpec(n_samples=64, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = Clot(4, spec, ClotParams(sinkhorn_eps=0.05, sinkhorn_iters=1000, sinkhorn_tol=1e-3))
    torch.manual_seed(0)
    logits = torch.randn(64, 4) * 3
    logits[:, 0] += 5  # the network prefers cluster 0 for everyone: the collapse OT must prevent
    q = method.pseudo_labels(logits)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-3)
    assert torch.allclose(q.sum(0), torch.full((4,), 16.0), rtol=1e-2)
    # Within the balance constraint, samples that prefer a cluster more are sent to it more.
    margin = logits[:, 1] - logits[:, 0]
    top = torch.argsort(margin, descending=True)[:8]
    assert q[top, 1].mean() > q[:, 1].mean()


def test_the_views_of_all_heads_get_the_labels_they_would_get_one_by_one():
    """pseudo_labels_of solves every view of every head together: the same plans, and the same
    running masses per head, as solving the views in turn."""
    import copy

    from otclust.methods.base import InputSpec

    spec = InputSpec(n_samples=64, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    together = Clot(5, spec, ClotParams(n_heads=3))
    together.set_cluster_prior("known", torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1]))
    apart = copy.deepcopy(together)
    torch.manual_seed(0)
    views = [torch.randn(64, 5) * scale for scale in (1.0, 2.0, 4.0, 8.0, 3.0, 6.0)]
    heads = [0, 0, 1, 1, 2, 2]
    for _ in range(2):  # the second round starts from the running masses the first left
        solved = together.pseudo_labels_of(views, heads)
        for view, head, q in zip(views, heads, solved):
            torch.testing.assert_close(q, apart.pseudo_labels(view, head))
    torch.testing.assert_close(together.head_mass, apart.head_mass)


def test_relaxed_auto_prior_lets_cluster_sizes_follow_the_predictions():
    from otclust.methods.base import InputSpec

    spec = InputSpec(n_samples=64, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = Clot(2, spec, ClotParams(sinkhorn_eps=0.2, sinkhorn_iters=1000, sinkhorn_tol=1e-6))
    torch.manual_seed(0)
    logits = torch.randn(64, 2)
    logits[:48, 0] += 4  # three quarters of the batch clearly belong to cluster 0
    balanced = method.pseudo_labels(logits).sum(0)
    method.set_cluster_prior("auto", None, size_penalty=0.05)
    relaxed = method.pseudo_labels(logits).sum(0)
    torch.testing.assert_close(relaxed.sum(), torch.tensor(64.0))  # every sample still hands out all its mass
    assert abs(float(balanced[0]) - 32) < 1.0  # the hard constraint: equal halves
    assert float(relaxed[0]) > 40  # the KL-relaxed one moves most of the way towards 48


def test_clot_beats_pixel_kmeans_where_only_learned_invariances_separate_the_classes(stripes):
    dataset, pixel_acc = stripes
    assert pixel_acc < 0.45  # the classes are not in the raw pixel geometry
    config = FitConfig(method="clot", clusters=3, epochs=10, batch_size=60, lr=3e-3, seed=0, eval_every=10)
    result = Trainer(config, progress=False, log=lambda m: None).fit(dataset)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert len(np.unique(result.labels)) == 3
    # 1.0 on seeds 0-3 when this was written; a network that learned nothing reads out ~0.5.
    assert result.metrics["acc"] >= 0.9


def test_multiple_heads_predict_with_the_lowest_loss_head(blob_images):
    images, _ = blob_images
    dataset = dataset_from_array(images)
    config = FitConfig(method="clot", clusters=3, epochs=1, batch_size=60, params={"n_heads": 3}, eval_every=1, readout="head")
    result = Trainer(config, progress=False, log=lambda m: None).fit(dataset)
    method = result.method
    assert method.best_head() == int(torch.argmin(method.head_loss))
    x = method.standardize(dataset.data[:5])
    method.eval()
    assert torch.equal(method.cluster_logits(x), method.cluster_head(method.backbone(x))[method.best_head()])


def test_overclustering_head_and_selflabel_phase_run(blob_images):
    images, labels = blob_images
    dataset = dataset_from_array(images)
    dataset.labels = labels
    config = FitConfig(method="clot", clusters=3, epochs=4, batch_size=60, lr=3e-3, eval_every=4, params={"overcluster_factor": 3, "selflabel_fraction": 0.25, "selflabel_threshold": 0.5})
    result = Trainer(config, progress=False, log=lambda m: None).fit(dataset)
    assert result.method.overcluster_head.heads[0].out_features == 9
    assert "loss_contrastive" in result.history[0] and "loss_selflabel" not in result.history[0]
    last = result.history[-1]
    assert "loss_selflabel" in last and last["loss_confident"] > 0
    assert len(np.unique(result.labels)) == 3


def test_ema_teacher_gives_the_targets_and_follows_the_network_slowly(blob_images):
    from otclust.methods.base import InputSpec

    images, _ = blob_images
    dataset = dataset_from_array(images)
    spec = InputSpec.from_dataset(dataset)
    method = Clot(3, spec, ClotParams(teacher_momentum=0.9))
    batch = dataset.data[:32]
    method.training_step(batch, torch.arange(32))  # the first step copies the network
    teacher_weight = method.teacher.module.cluster_head.heads[0].weight
    student_weight = method.cluster_head.heads[0].weight
    torch.testing.assert_close(teacher_weight, student_weight)
    assert not any(p.requires_grad for p in method.teacher.parameters())
    with torch.no_grad():
        student_weight.add_(1.0)
    method.training_step(batch, torch.arange(32))
    torch.testing.assert_close(teacher_weight, student_weight - 0.9)  # 0.9 * old + 0.1 * new


def test_teacher_momentum_outside_its_range_is_a_user_error():
    from otclust.errors import UserError
    from otclust.methods.base import InputSpec
    from otclust.precision import FLOAT32

    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    with pytest.raises(UserError, match="teacher_momentum"):
        Clot(2, spec, ClotParams(teacher_momentum=1.0))


def test_neighbour_views_come_from_the_mined_neighbours_and_resume(run_interrupted_and_resumed, blobs):
    params = {"neighbors": 4, "neighbor_start_fraction": 0.25, "neighbor_every_fraction": 0.5}  # epochs 1 and 3 of 4
    config = FitConfig(method="clot", clusters=3, epochs=4, batch_size=60, lr=3e-3, seed=0, eval_every=4, params=params)
    straight, resumed = run_interrupted_and_resumed(config, blobs, stop_after=2)
    index = straight.method.neighbor_index
    assert index.shape == (len(blobs.data), 4)
    # On these well-separated blobs nearly every mined neighbour shares its sample's class.
    assert (blobs.labels[index.numpy()] == blobs.labels[:, None]).mean() > 0.9
    torch.testing.assert_close(resumed.method.neighbor_index, index)
    np.testing.assert_allclose(resumed.proba, straight.proba, atol=1e-4)
    assert len(np.unique(straight.labels)) == 3


def test_the_second_view_is_drawn_from_the_neighbours():
    from otclust.methods.base import InputSpec

    images = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    for i in range(6):
        images[i] += 40 * i
    spec = InputSpec.from_dataset(dataset_from_array(images.squeeze(1).numpy()))
    method = Clot(2, spec, ClotParams(neighbors=1))
    method.neighbor_images = images
    method.neighbor_index = torch.tensor([[5], [4], [3], [2], [1], [0]])
    seen = []
    method.views = lambda batch, count: (seen.append(batch.clone()), [batch.float()] * count)[1]
    method.training_step(images[:2], torch.tensor([0, 1]))
    assert torch.equal(seen[-1], images[[5, 4]])


def test_neighbour_mining_searches_by_cells_only_from_its_threshold(blobs, monkeypatch):
    """neighbor_search=auto mines by inverted lists from MINING_CELLS_FROM rows on, exact below;
    the read-out's own search is not moved by it."""
    import otclust.methods.clot as clot_module

    cells_seen, real = [], clot_module.nearest_neighbors

    def spy(features, k, **kwargs):
        cells_seen.append(kwargs.get("cells"))
        return real(features, k, **kwargs)

    monkeypatch.setattr(clot_module, "nearest_neighbors", spy)
    params = {"neighbors": 3, "neighbor_start_fraction": 0.5, "neighbor_every_fraction": 0.5}  # epoch 1 of 2
    for threshold, search, expected in ((10**6, "auto", 0), (len(blobs.data), "auto", round(len(blobs.data) ** 0.5)), (10**6, "cells", round(len(blobs.data) ** 0.5)), (1, "exact", 0)):
        cells_seen.clear()
        monkeypatch.setattr(clot_module, "MINING_CELLS_FROM", threshold)
        config = FitConfig(method="clot", clusters=3, epochs=2, batch_size=60, seed=0, params={**params, "neighbor_search": search})
        method = Trainer(config, progress=False, log=lambda m: None).fit(blobs).method
        assert cells_seen == [expected], (threshold, search)
        # even from cells, the mined rows are k distinct other samples, mostly of the same blob
        index = method.neighbor_index.numpy()
        assert index.shape == (len(blobs.data), 3) and not (index == np.arange(len(index))[:, None]).any()
        assert (blobs.labels[index] == blobs.labels[:, None]).mean() > 0.9


def test_an_unknown_neighbour_search_is_a_user_error():
    from otclust.errors import UserError
    from otclust.methods.base import InputSpec

    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    with pytest.raises(UserError, match="neighbor_search must be one of auto, exact, cells"):
        Clot(2, spec, ClotParams(neighbor_search="faiss"))


def test_negative_neighbour_count_is_a_user_error():
    from otclust.errors import UserError
    from otclust.methods.base import InputSpec
    from otclust.precision import FLOAT32

    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    with pytest.raises(UserError, match="neighbors"):
        Clot(2, spec, ClotParams(neighbors=-1))


def test_cluster_loss_counts_only_from_cluster_start(blob_images):
    from types import SimpleNamespace

    from otclust.methods.base import InputSpec

    images, _ = blob_images
    dataset = dataset_from_array(images)
    method = Clot(3, InputSpec.from_dataset(dataset), ClotParams(cluster_start_fraction=0.34))  # epoch 1 of 3
    trainer = SimpleNamespace(config=SimpleNamespace(epochs=3))
    batch, indices = dataset.data[:32], torch.arange(32)
    method.on_epoch_start(trainer, 0)
    warm = method.training_step(batch, indices)
    torch.testing.assert_close(warm["loss"].detach(), warm["contrastive"])
    warm["loss"].backward()
    assert float(method.cluster_head.heads[0].weight.grad.abs().sum()) == 0.0
    method.on_epoch_start(trainer, 1)
    parts = method.training_step(batch, indices)
    torch.testing.assert_close(parts["loss"].detach(), parts["contrastive"] + method.params.cluster_weight * parts["cluster"])


def test_auto_prior_trains_towards_the_cluster_sizes_the_features_show(blob_images):
    images, labels = blob_images
    keep = np.concatenate([np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)[:30], np.flatnonzero(labels == 2)[:10]])
    dataset = dataset_from_array(images[keep])
    dataset.labels = labels[keep]
    truth = np.sort(np.bincount(labels[keep]) / len(keep))[::-1]
    config = FitConfig(method="clot", clusters=3, epochs=3, batch_size=40, seed=0, cluster_proportions="auto", params={"size_updates": 1})
    method = Trainer(config, progress=False, log=lambda m: None).fit(dataset).method
    estimate = method.feature_sizes.numpy()
    assert estimate.sum() > 0 and np.all(np.diff(estimate) <= 0)
    assert abs(estimate[0] - truth[0]) < 0.1  # a third each would be 0.33 off
    # from the estimate on, the OT columns are that multiset matched to the clusters by mass
    b = method.target_marginal(torch.full((5, 3), 1 / 3))
    torch.testing.assert_close(torch.sort(b, descending=True).values, method.feature_sizes)


def test_checkpoint_from_before_feature_sizes_loads():
    from otclust.methods.base import InputSpec
    from otclust.ot.priors import estimate_sizes

    spec = InputSpec(n_samples=64, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    old = Clot(3, spec, ClotParams()).state_dict()
    del old["feature_sizes"]
    method = Clot(3, spec, ClotParams())
    method.set_cluster_prior("auto", None)
    method.predicted_mass.copy_(torch.tensor([0.5, 0.3, 0.2]))
    old["predicted_mass"] = method.predicted_mass.clone()
    method.load_state_dict(old)
    assert float(method.feature_sizes.sum()) == 0.0
    # such a model was trained towards its predicted masses; predict --assign balanced still uses them
    torch.testing.assert_close(method.estimated_sizes(), estimate_sizes(torch.tensor([0.5, 0.3, 0.2])))


def test_auto_sizes_are_estimated_when_neighbours_are_mined(blobs, monkeypatch):
    import otclust.methods.clot as clot_module

    estimated_at, real = [], clot_module.estimate_sizes_from_features

    def spy(features, n_clusters, seed, neighbors, rounds, neighbor_index=None, **kwargs):
        estimated_at.append(seed)  # the seed is the run's seed + the epoch
        assert neighbor_index is not None and neighbor_index.shape[1] == neighbors == 5
        return real(features, n_clusters, seed, neighbors, rounds, neighbor_index=neighbor_index, **kwargs)

    monkeypatch.setattr(clot_module, "estimate_sizes_from_features", spy)
    params = {"neighbors": 3, "neighbor_start_fraction": 0.2, "neighbor_every_fraction": 0.4}  # epochs 1 and 3 of 5
    config = FitConfig(method="clot", clusters=3, epochs=5, batch_size=60, seed=0, cluster_proportions="auto", params=params, readout_params={"neighbors": 5})
    method = Trainer(config, progress=False, log=lambda m: None).fit(blobs).method
    assert estimated_at == [1, 3]  # the mining epochs, one kNN search each
    assert method.neighbor_index.shape[1] == 3  # the views still pair each sample with its 3 nearest


def test_auto_sizes_are_equal_until_the_first_feature_estimate():
    from otclust.methods.base import InputSpec

    spec = InputSpec(n_samples=64, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = Clot(3, spec, ClotParams())
    method.set_cluster_prior("auto", None)
    method.predicted_mass.copy_(torch.tensor([0.2, 0.5, 0.3]))
    torch.testing.assert_close(method.estimated_sizes(), torch.full((3,), 1 / 3))
    method.feature_sizes.copy_(torch.tensor([0.6, 0.3, 0.1]))
    torch.testing.assert_close(method.estimated_sizes(), torch.tensor([0.1, 0.6, 0.3]))  # largest to the fullest cluster


def test_each_head_matches_a_known_prior_to_its_own_cluster_masses():
    """Two heads number their clusters differently (head 0 fills cluster 0, head 1 cluster 2).
    Under known sizes 0.6/0.3/0.1 each head's OT columns must give 0.6 to its own fullest
    cluster and 0.3 to the middle one; one running mass shared by both heads would mix them."""
    from otclust.methods.base import InputSpec

    spec = InputSpec(n_samples=64, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = Clot(3, spec, ClotParams(n_heads=2))
    method.set_cluster_prior("known", torch.tensor([0.6, 0.3, 0.1]))
    preferred = [torch.tensor([4.0, 2.0, 0.0]), torch.tensor([0.0, 2.0, 4.0])]

    class FixedHeads(torch.nn.Module):
        def forward(self, features):
            return [scores.expand(len(features), 3) + 0 * features[:, :1] for scores in preferred]

    method.cluster_head = FixedHeads()
    columns, solve = [], method.solve_transport
    method.solve_transport = lambda scores, eps, b=None, **kwargs: (columns.append(b.clone()), solve(scores, eps, b=b, **kwargs))[1]
    batch = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    for _ in range(30):
        method.training_step(batch, torch.arange(32))
    head_0, head_1 = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.1, 0.3, 0.6])
    for b, expected in zip(columns[-4:], [head_0, head_0, head_1, head_1]):  # two views per head
        torch.testing.assert_close(b, expected)
    torch.testing.assert_close(method.predicted_mass, method.head_mass[method.best_head()])


def _phases(params: dict, epochs: int) -> dict:
    """Per epoch of a run: (self-labelling, clustering, neighbours mined) as CLOT schedules them."""
    from types import SimpleNamespace

    from otclust.methods.base import InputSpec
    from otclust.precision import FLOAT32

    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = Clot(2, spec, ClotParams(**params))
    mined = []
    trainer = SimpleNamespace(config=SimpleNamespace(epochs=epochs, seed=0), readout_params=None, train_data=torch.zeros(8, 4), precision=FLOAT32)
    trainer.embed = lambda data: (mined.append(True), np.zeros((8, 4), dtype=np.float32))[1]
    phases = []
    for epoch in range(epochs):
        before = len(mined)
        method.on_epoch_start(trainer, epoch)
        phases.append((method.selflabelling, method.clustering, len(mined) > before))
    return phases


def test_the_schedule_is_a_share_of_the_run_whatever_its_length():
    shares = {"neighbors": 2, "neighbor_start_fraction": 0.2, "neighbor_every_fraction": 0.2, "cluster_start_fraction": 0.1, "selflabel_fraction": 0.1}
    for epochs in (10, 40):
        phases = _phases(shares, epochs)
        assert [e for e, (_, clustering, _) in enumerate(phases) if not clustering] == list(range(epochs // 10))
        assert [e for e, (selflabel, _, _) in enumerate(phases) if selflabel] == list(range(epochs - epochs // 10, epochs))
        assert [e for e, (_, _, mined) in enumerate(phases) if mined] == list(range(epochs // 5, epochs, epochs // 5))


def test_the_old_epoch_counts_still_work_with_a_warning():
    with pytest.warns(FutureWarning, match="neighbor_start is deprecated"):
        phases = _phases({"neighbors": 2, "neighbor_start": 3, "neighbor_every": 2, "cluster_start": 1}, 20)
    assert [e for e, (_, _, mined) in enumerate(phases) if mined] == list(range(3, 20, 2))
    assert [e for e, (_, clustering, _) in enumerate(phases) if not clustering] == [0]

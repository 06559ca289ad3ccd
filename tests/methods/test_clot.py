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
    method = Clot(4, spec, ClotParams(lam=20, sinkhorn_iters=1000, sinkhorn_tol=1e-3))
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


def test_relaxed_auto_prior_lets_cluster_sizes_follow_the_predictions():
    from otclust.methods.base import InputSpec

    spec = InputSpec(n_samples=64, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    method = Clot(2, spec, ClotParams(lam=5, sinkhorn_iters=1000, sinkhorn_tol=1e-6))
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
    config = FitConfig(method="clot", clusters=3, epochs=1, batch_size=60, params={"n_heads": 3, "predict_by": "head"}, eval_every=1)
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
    config = FitConfig(method="clot", clusters=3, epochs=4, batch_size=60, lr=3e-3, eval_every=4, params={"overcluster_factor": 3, "selflabel_epochs": 1, "selflabel_threshold": 0.5})
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

    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    with pytest.raises(UserError, match="teacher_momentum"):
        Clot(2, spec, ClotParams(teacher_momentum=1.0))


def _fit_predicting_by_kmeans(blob_images, out_dir, **params):
    images, labels = blob_images
    dataset = dataset_from_array(images)
    dataset.labels = labels
    config = FitConfig(method="clot", clusters=3, epochs=4, batch_size=60, lr=3e-3, seed=0, eval_every=4, params={"predict_by": "kmeans", **params})
    out_dir.mkdir()
    result = Trainer(config, out_dir=out_dir, progress=False, log=lambda m: None).fit(dataset)
    method = result.method
    method.eval()
    with torch.no_grad():
        unit = torch.nn.functional.normalize(method.backbone(method.standardize(dataset.data)), dim=1)
    return dataset, result, unit


def test_predict_by_kmeans_without_smoothing_assigns_to_the_nearest_feature_center(blob_images, tmp_path):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from otclust.engine import load_trained

    dataset, result, unit = _fit_predicting_by_kmeans(blob_images, tmp_path / "run", smooth_rounds=0)
    method = result.method
    centers = KMeans(3, n_init=50, random_state=0).fit(unit.double().numpy()).cluster_centers_
    nearest = torch.cdist(unit.double(), torch.from_numpy(centers)).argmin(dim=1).numpy()
    assert adjusted_rand_score(nearest, result.labels) == 1.0  # the same partition, up to cluster names
    assert len(np.unique(result.labels)) == 3
    assert not bool(method.readout_bias.any())
    reloaded, _ = load_trained(tmp_path / "run" / "model.pt", device="cpu")
    np.testing.assert_array_equal(reloaded.predict_proba(dataset.data).argmax(1).numpy(), result.labels)


def test_predict_by_kmeans_reads_out_the_clusters_of_neighbour_smoothed_features(blob_images, tmp_path):
    """k-means on the smoothed features (recomputed here with a dense walk matrix), then a linear
    read-out of each image's own features predicts those clusters."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.neighbors import NearestNeighbors

    from otclust.engine import load_trained

    dataset, result, unit = _fit_predicting_by_kmeans(blob_images, tmp_path / "run", smooth_neighbors=5, smooth_rounds=3)
    x = unit.double().numpy()
    neighbours = NearestNeighbors(n_neighbors=6, metric="cosine", algorithm="brute").fit(x).kneighbors(x, return_distance=False)[:, 1:]
    walk = np.zeros((len(x), len(x)))
    np.put_along_axis(walk, neighbours, 1 / 5, axis=1)
    smoothed = np.linalg.matrix_power(0.5 * np.eye(len(x)) + 0.5 * walk, 3) @ x
    smoothed /= np.linalg.norm(smoothed, axis=1, keepdims=True)
    clusters = KMeans(3, n_init=50, random_state=0).fit_predict(smoothed)
    assert adjusted_rand_score(clusters, result.labels) > 0.95  # the same partition, up to cluster names
    assert bool(result.method.readout_bias.any())
    reloaded, _ = load_trained(tmp_path / "run" / "model.pt", device="cpu")
    np.testing.assert_array_equal(reloaded.predict_proba(dataset.data).argmax(1).numpy(), result.labels)


@pytest.mark.parametrize("params, name", [({"kmeans_restarts": 0}, "kmeans_restarts"), ({"kmeans_choice": "lowest"}, "kmeans_choice"), ({"smooth_rounds": -1}, "smooth_rounds"), ({"smooth_neighbors": 0}, "smooth_neighbors")])
def test_bad_readout_settings_are_user_errors(params, name):
    from otclust.errors import UserError
    from otclust.methods.base import InputSpec

    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    with pytest.raises(UserError, match=name):
        Clot(2, spec, ClotParams(**params))


def test_smoothing_over_neighbours_equals_powers_of_the_dense_walk_matrix():
    from otclust.methods.clot import smooth_over_neighbors

    g = torch.Generator().manual_seed(0)
    features = torch.randn(30, 4, generator=g, dtype=torch.float64)
    index = torch.randint(30, (30, 6), generator=g)
    walk = np.zeros((30, 30))
    for row, cols in enumerate(index.numpy()):
        for col in cols:
            walk[row, col] += 1 / 6  # a neighbour listed twice counts twice
    expected = np.linalg.matrix_power(0.5 * np.eye(30) + 0.5 * walk, 4) @ features.numpy()
    np.testing.assert_allclose(smooth_over_neighbors(features, index, 4).numpy(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(smooth_over_neighbors(features, index, 0), features.float())


@pytest.mark.parametrize("n_clusters, present", [(2, [0, 1]), (4, [0, 1, 3])])
def test_linear_readout_predicts_the_labels_it_was_fitted_to(n_clusters, present):
    from otclust.methods.clot import fit_linear_readout

    g = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(n_clusters, 5, generator=g)
    labels = np.repeat(present, 20)
    features = centers[labels] + torch.randn(len(labels), 5, generator=g)
    weight, bias = fit_linear_readout(features, labels, n_clusters, seed=0)
    assert weight.shape == (n_clusters, 5) and bias.shape == (n_clusters,)
    np.testing.assert_array_equal((features @ weight.T + bias).argmax(1).numpy(), labels)  # an empty cluster never wins


def test_a_checkpoint_with_kmeans_centres_still_predicts_by_nearest_centre(blob_images):
    from otclust.methods.base import InputSpec

    images, _ = blob_images
    dataset = dataset_from_array(images)
    method = Clot(3, InputSpec.from_dataset(dataset), ClotParams())
    state = {k: v for k, v in method.state_dict().items() if not k.startswith("readout_")}
    centers = torch.nn.functional.normalize(torch.randn(3, method.backbone.out_dim), dim=1)
    state["feature_centers"] = centers
    method.load_state_dict(state)
    method.eval()
    with torch.no_grad():
        unit = torch.nn.functional.normalize(method.backbone(method.standardize(dataset.data)), dim=1)
        predicted = method.predict_proba(dataset.data).argmax(1)
    torch.testing.assert_close(predicted, torch.cdist(unit, centers).argmin(dim=1))


def test_unknown_predict_by_is_a_user_error():
    from otclust.errors import UserError
    from otclust.methods.base import InputSpec

    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    with pytest.raises(UserError, match="predict_by"):
        Clot(2, spec, ClotParams(predict_by="centroids"))


def test_nearest_neighbors_match_scikit_learn_cosine_neighbours():
    from sklearn.neighbors import NearestNeighbors

    from otclust.methods.clot import nearest_neighbors

    features = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    ours = nearest_neighbors(features, 5, chunk=64).numpy()  # several chunks
    reference = NearestNeighbors(n_neighbors=6, metric="cosine", algorithm="brute").fit(features.numpy()).kneighbors(return_distance=False)
    np.testing.assert_array_equal(ours, reference[:, :5])
    assert not (ours == np.arange(300)[:, None]).any()  # a sample is never its own neighbour


def test_neighbour_views_come_from_the_mined_neighbours_and_resume(run_interrupted_and_resumed, blobs):
    params = {"neighbors": 4, "neighbor_start": 1, "neighbor_every": 2}
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


def test_negative_neighbour_count_is_a_user_error():
    from otclust.errors import UserError
    from otclust.methods.base import InputSpec

    spec = InputSpec(n_samples=8, feature_dim=4, mean=[0.0] * 4, std=[1.0] * 4)
    with pytest.raises(UserError, match="neighbors"):
        Clot(2, spec, ClotParams(neighbors=-1))


def test_cluster_loss_counts_only_from_cluster_start(blob_images):
    from types import SimpleNamespace

    from otclust.methods.base import InputSpec

    images, _ = blob_images
    dataset = dataset_from_array(images)
    method = Clot(3, InputSpec.from_dataset(dataset), ClotParams(cluster_start=1))
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


@pytest.mark.parametrize("proportions, predict_by, expected", [("uniform", None, "kmeans"), ("0.5,0.3,0.2", None, "kmeans"), ("auto", "auto", "kmeans"), ("auto", "head", "head")])
def test_the_kmeans_readout_predicts_under_every_prior_unless_the_head_is_asked_for(blobs, proportions, predict_by, expected):
    params = {} if predict_by is None else {"predict_by": predict_by}
    config = FitConfig(method="clot", clusters=3, epochs=1, batch_size=60, seed=0, cluster_proportions=proportions, params=params)
    method = Trainer(config, progress=False, log=lambda m: None).fit(blobs).method
    assert method.predicts_by() == expected
    assert bool(method.readout_weight.any()) == (expected == "kmeans")


@pytest.mark.parametrize("choice, separated", [("prior", True), ("inertia", False)])
def test_kmeans_restart_choice_under_equal_sizes_keeps_the_balanced_partition(choice, separated):
    """Two tight blobs and a long line: the lowest plain inertia merges the blobs and splits the
    line; under equal cluster sizes the restart that separates all three wins."""
    from sklearn.metrics import adjusted_rand_score

    from otclust.methods.clot import choose_kmeans_restart

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100, 2, generator=g) * 0.05, torch.randn(100, 2, generator=g) * 0.05 + torch.tensor([4.0, 0.0])])
    x = torch.cat([x, torch.stack([30 + 20 * torch.rand(100, generator=g), torch.zeros(100)], dim=1)])
    truth = np.repeat([0, 1, 2], 100)
    chosen = choose_kmeans_restart(x, 3, seed=0, params=ClotParams(kmeans_restarts=30, kmeans_choice=choice))
    assert (adjusted_rand_score(truth, chosen.labels) == 1.0) == separated


def test_kmeans_restart_choice_matches_known_sizes_to_clusters():
    """Known unequal sizes, given in any order: the restart whose clusters fit them wins."""
    from sklearn.metrics import adjusted_rand_score

    from otclust.methods.clot import choose_kmeans_restart

    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(150, 2, generator=g) * 0.05, torch.randn(50, 2, generator=g) * 0.05 + torch.tensor([4.0, 0.0])])
    x = torch.cat([x, torch.stack([30 + 20 * torch.rand(100, generator=g), torch.zeros(100)], dim=1)])
    truth = np.repeat([0, 1, 2], [150, 50, 100])
    sizes = torch.tensor([100.0, 150.0, 50.0]) / 300  # shuffled relative to the clusters
    params = ClotParams(kmeans_restarts=30)
    assert adjusted_rand_score(truth, choose_kmeans_restart(x, 3, seed=0, params=params, sizes=sizes).labels) == 1.0
    inertia_choice = choose_kmeans_restart(x, 3, seed=0, params=ClotParams(kmeans_restarts=30, kmeans_choice="inertia"))
    assert adjusted_rand_score(truth, inertia_choice.labels) < 1.0


@pytest.mark.parametrize("proportions", ["uniform", "0.5,0.3,0.2", "auto"])
def test_readout_chooses_its_restart_under_the_runs_size_prior(blobs, proportions, monkeypatch):
    import otclust.methods.clot as clot_module

    seen = {}
    real = clot_module.fit_kmeans_readout

    def spy(features, n_clusters, seed, params, sizes=None, **kwargs):
        seen["sizes"], seen["choice"] = sizes, params.kmeans_choice
        return real(features, n_clusters, seed, params, sizes=sizes, **kwargs)

    monkeypatch.setattr(clot_module, "fit_kmeans_readout", spy)
    config = FitConfig(method="clot", clusters=3, epochs=1, batch_size=60, seed=0, cluster_proportions=proportions, params={"predict_by": "kmeans"})
    method = Trainer(config, progress=False, log=lambda m: None).fit(blobs).method
    if proportions == "uniform":  # equal sizes imposed
        assert seen["sizes"] is None and seen["choice"] == "prior"
    elif proportions == "auto":  # sizes unknown: none imposed, plain inertia decides
        assert seen["sizes"] is None and seen["choice"] == "inertia"
    else:  # the known multiset; the read-out matches it to each restart's clusters
        torch.testing.assert_close(torch.sort(seen["sizes"]).values, torch.tensor([0.2, 0.3, 0.5]))
        assert seen["choice"] == "prior"
    assert bool(method.readout_weight.any())


def test_feature_size_estimate_recovers_unequal_cluster_sizes():
    from otclust.methods.clot import estimate_sizes_from_features

    g = torch.Generator().manual_seed(0)
    counts = [240, 120, 40]
    centers = torch.eye(8)[:3] * 10
    features = torch.cat([c + torch.randn(n, 8, generator=g) for c, n in zip(centers, counts)])
    sizes = estimate_sizes_from_features(features, 3, seed=0, params=ClotParams())
    torch.testing.assert_close(sizes, torch.tensor([0.6, 0.3, 0.1]))  # largest first, above the 0.2/K floor
    # a cluster smaller than the floor (12 of 252 points, floor 0.2/K = 0.1) is held at the floor
    tiny = estimate_sizes_from_features(torch.cat([features[:240], features[-12:]]), 2, seed=0, params=ClotParams())
    torch.testing.assert_close(tiny, torch.tensor([240 / 252, 0.1]) / (240 / 252 + 0.1))


def test_size_updates_are_spread_over_training_and_skip_the_untrained_first_epoch():
    from otclust.methods.clot import size_update_epochs

    assert size_update_epochs(300, 9) == set(range(30, 300, 30))
    assert size_update_epochs(10, 3) == {2, 5, 8}
    assert size_update_epochs(1, 9) == set()


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

    def spy(features, n_clusters, seed, params, neighbor_index=None, **kwargs):
        estimated_at.append(seed)  # the seed is the run's seed + the epoch
        assert neighbor_index is not None and neighbor_index.shape[1] == params.smooth_neighbors
        return real(features, n_clusters, seed, params, neighbor_index=neighbor_index, **kwargs)

    monkeypatch.setattr(clot_module, "estimate_sizes_from_features", spy)
    params = {"neighbors": 3, "neighbor_start": 1, "neighbor_every": 2, "smooth_neighbors": 5}
    config = FitConfig(method="clot", clusters=3, epochs=5, batch_size=60, seed=0, cluster_proportions="auto", params=params)
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

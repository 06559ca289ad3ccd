import torch

from otclust.readout import estimate_sizes_from_features, size_update_epochs


def test_feature_size_estimate_recovers_unequal_cluster_sizes():
    g = torch.Generator().manual_seed(0)
    counts = [240, 120, 40]
    centers = torch.eye(8)[:3] * 10
    features = torch.cat([c + torch.randn(n, 8, generator=g) for c, n in zip(centers, counts)])
    sizes = estimate_sizes_from_features(features, 3, seed=0)
    torch.testing.assert_close(sizes, torch.tensor([0.6, 0.3, 0.1]))  # largest first, above the 0.2/K floor
    # a cluster smaller than the floor (12 of 252 points, floor 0.2/K = 0.1) is held at the floor
    tiny = estimate_sizes_from_features(torch.cat([features[:240], features[-12:]]), 2, seed=0)
    torch.testing.assert_close(tiny, torch.tensor([240 / 252, 0.1]) / (240 / 252 + 0.1))


def test_size_updates_are_spread_over_training_and_skip_the_untrained_first_epoch():
    assert size_update_epochs(300, 9) == set(range(30, 300, 30))
    assert size_update_epochs(10, 3) == {2, 5, 8}
    assert size_update_epochs(1, 9) == set()

import pytest
import torch

from otclust.errors import UserError
from otclust.models import ClusterHead, ProjectionHead, build_backbone


@pytest.mark.parametrize("channels,size", [(1, (8, 8)), (1, (28, 28)), (3, (32, 32))])
def test_small_cnn_shapes(channels, size):
    net = build_backbone("small-cnn", channels, size, None)
    out = net(torch.randn(4, channels, *size))
    assert out.shape == (4, net.out_dim)


def test_resnet18_and_mlp_shapes():
    net = build_backbone("resnet18", 3, (32, 32), None)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    mlp = build_backbone("auto", None, None, 20)
    assert mlp(torch.randn(3, 20)).shape == (3, mlp.out_dim)
    flat = build_backbone("mlp", 1, (8, 8), None)
    assert flat(torch.randn(3, 1, 8, 8)).shape == (3, flat.out_dim)


def test_image_backbone_on_features_is_a_user_error():
    with pytest.raises(UserError):
        build_backbone("small-cnn", None, None, 20)
    with pytest.raises(UserError):
        build_backbone("vgg", 1, (8, 8), None)


def test_heads():
    heads = ClusterHead(16, 5, n_heads=3)
    outs = heads(torch.randn(4, 16))
    assert len(outs) == 3 and all(o.shape == (4, 5) for o in outs)
    assert ProjectionHead(16, out_dim=8)(torch.randn(4, 16)).shape == (4, 8)

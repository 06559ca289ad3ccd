import pytest
import torch

from otclust.errors import UserError
from otclust.models import ClusterHead, ProjectionHead, build_backbone


@pytest.mark.parametrize("channels,size", [(1, (8, 8)), (1, (28, 28)), (3, (32, 32))])
def test_small_cnn_shapes(channels, size):
    net = build_backbone("small-cnn", channels, size, None)
    out = net(torch.randn(4, channels, *size))
    assert out.shape == (4, net.out_dim)


@pytest.mark.parametrize("channels,size", [(1, (8, 8)), (1, (28, 28)), (3, (64, 64)), (3, (48, 80))])
def test_pooled_cnn_shapes(channels, size):
    net = build_backbone("pooled-cnn", channels, size, None).eval()
    assert net(torch.randn(4, channels, *size)).shape == (4, net.out_dim)


def test_pooled_cnn_features_do_not_depend_on_where_the_object_is():
    # An object moved by multiples of the total stride (16) on a blank canvas, away from the
    # borders (the receptive field is 33 px): the same features. The small CNN's differ.
    canvas = torch.zeros(2, 3, 128, 128)
    canvas[0, :, 32:48, 32:48] = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    canvas[1, :, 64:80, 48:64] = canvas[0, :, 32:48, 32:48]
    pooled = build_backbone("pooled-cnn", 3, (128, 128), None).eval()
    torch.testing.assert_close(pooled(canvas)[0], pooled(canvas)[1], atol=1e-5, rtol=1e-4)
    small = build_backbone("small-cnn", 3, (128, 128), None).eval()
    assert not torch.allclose(small(canvas)[0], small(canvas)[1], atol=1e-3)


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

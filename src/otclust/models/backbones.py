"""Feature extractors. Each exposes `out_dim`, the length of the feature vector it returns."""

from __future__ import annotations

import torch
from torch import nn

from otclust.errors import UserError
from otclust.models.pretrained import is_pretrained


def conv_bn_relu(depths: list[int], kernels: list[int]) -> list[nn.Module]:
    """Stride-2 convolutions from depths[i] to depths[i + 1] channels, each followed by batch norm
    and ReLU, as one flat list (the layer indices are the parameter names checkpoints hold)."""
    layers: list[nn.Module] = []
    for c_in, c_out, kernel in zip(depths, depths[1:], kernels):
        layers += [nn.Conv2d(c_in, c_out, kernel, stride=2, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return layers


class SmallCNN(nn.Module):
    """The conv encoder of Genevay et al.: depths 32-64-128, kernels 5-5-3, stride 2, then FC.

    Batch norm is added after each convolution; it makes the contrastive and OT losses train
    reliably at the learning rates Adam uses by default.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], out_dim: int = 256, width: int = 1):
        super().__init__()
        depths = [in_channels, 32 * width, 64 * width, 128 * width]
        self.conv = nn.Sequential(*conv_bn_relu(depths, kernels=[5, 5, 3]))
        with torch.no_grad():
            flat = self.conv(torch.zeros(2, in_channels, *image_size))[0].numel()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class PooledCNN(nn.Module):
    """The small CNN with a fourth strided convolution and global average pooling before its FC.

    The small CNN's FC layer reads every position of its last feature map, so what it learns about
    an object is tied to where the object was; pooled features are the same wherever the object
    lies, the bias photos of objects at varying places need (docs/results.md, photo folders).
    """

    def __init__(self, in_channels: int, out_dim: int = 256):
        super().__init__()
        depths = [in_channels, 32, 64, 128, 256]
        self.conv = nn.Sequential(*conv_bn_relu(depths, kernels=[5, 3, 3, 3]))
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(depths[-1], out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(planes),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-18/34 with the CIFAR stem (3x3 conv, no max-pool) used by SimCLR/SCAN/CC on 32x32 images."""

    LAYERS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}

    def __init__(self, in_channels: int, depth: int = 18):
        super().__init__()
        blocks = self.LAYERS[depth]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        layers, in_planes = [], 64
        for index, (planes, count) in enumerate(zip([64, 128, 256, 512], blocks)):
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(_BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = 512

    def forward(self, x):
        return self.pool(self.layers(self.stem(x)))


class MLPBackbone(nn.Module):
    """For precomputed feature vectors (features:PATH.npy) or flattened small images."""

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int = 256, flatten: bool = False):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten() if flatten else nn.Identity(),
            nn.Linear(in_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim, bias=False),
            nn.BatchNorm1d(out_dim),
            nn.ReLU(inplace=True),
        )
        self.out_dim = out_dim

    def forward(self, x):
        return self.net(x)


BACKBONES = ["auto", "small-cnn", "pooled-cnn", "resnet18", "resnet34", "mlp"]


def build_backbone(name: str, channels: int | None, image_size: tuple[int, int] | None, feature_dim: int | None) -> nn.Module:
    """Backbone by name; 'auto' picks the MLP for feature vectors and the small CNN for images.

    The small CNN is the default for images because it is what runs on a CPU; choose resnet18 on
    a GPU for CIFAR/STL-sized photos.
    """
    if is_pretrained(name):
        # A pretrained backbone is a frozen stage before training (data/embeddings.py): the
        # method's own network is the MLP on the features it produced.
        if feature_dim is None:
            raise UserError(f"backbone '{name}' embeds images before training: use otclust fit or OTClust, which run it first")
        name = "mlp"
    if name == "auto":
        name = "mlp" if feature_dim is not None else "small-cnn"
    if feature_dim is not None and name != "mlp":
        raise UserError(f"backbone '{name}' needs images, but the data are feature vectors: use --backbone mlp")
    if name == "mlp":
        if feature_dim is not None:
            return MLPBackbone(feature_dim)
        return MLPBackbone(channels * image_size[0] * image_size[1], flatten=True)
    if name == "small-cnn":
        return SmallCNN(channels, image_size)
    if name == "pooled-cnn":
        return PooledCNN(channels)
    if name in ("resnet18", "resnet34"):
        return ResNetCifar(channels, depth=int(name[len("resnet"):]))
    raise UserError(f"unknown backbone '{name}': use one of {', '.join(BACKBONES)}, or a pretrained timm:NAME, torchvision:NAME, otclust:RUN/model.pt")

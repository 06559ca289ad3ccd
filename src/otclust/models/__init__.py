"""Backbones (image or vector -> feature vector) and heads (feature vector -> task output)."""

from otclust.models.backbones import BACKBONES, MLPBackbone, ResNetCifar, SmallCNN, build_backbone
from otclust.models.heads import ClusterHead, CosineClusterHead, ProjectionHead

__all__ = [
    "BACKBONES",
    "ClusterHead",
    "CosineClusterHead",
    "MLPBackbone",
    "ProjectionHead",
    "ResNetCifar",
    "SmallCNN",
    "build_backbone",
]

"""Heads that sit on a backbone's feature vector; composable so methods can mix them.

They compute in float32 under autocast (otclust.precision.in_float32): small layers whose outputs
feed the OT pseudo-labels and the losses, where 16-bit rounding costs accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from otclust.precision import in_float32


class ClusterHead(nn.Module):
    """One or more K-way linear classifiers; returns a list of logits, one per head.

    Several heads trained side by side (IIC/SCAN) give a choice among clusterings that is made
    by the lowest training loss, never by labels.
    """

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int = 1, hidden_dim: int | None = None):
        super().__init__()

        def make_head() -> nn.Module:
            if hidden_dim is None:
                return nn.Linear(in_dim, n_clusters)
            return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, n_clusters))

        self.heads = nn.ModuleList([make_head() for _ in range(n_heads)])
        self.n_clusters = n_clusters

    @in_float32
    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [head(features) for head in self.heads]


class ProjectionHead(nn.Module):
    """SimCLR's MLP (Linear-BN-ReLU-Linear) to the space where the contrastive loss is taken."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    @in_float32
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class CosineClusterHead(nn.Module):
    """Prototypes on the unit sphere scored by cosine similarity / T (as SwAV's prototypes)."""

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int, temperature: float):
        super().__init__()
        self.prototypes = nn.ParameterList([nn.Parameter(torch.randn(n_clusters, in_dim) / in_dim**0.5) for _ in range(n_heads)])
        self.temperature = temperature

    @in_float32
    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        unit = F.normalize(features, dim=1)
        return [unit @ F.normalize(p, dim=1).T / self.temperature for p in self.prototypes]

"""A slowly moving average of a network that gives the training targets (mean teacher / BYOL / DINO)."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class ClusterPredictor(nn.Module):
    """Backbone followed by the cluster heads: the part an EMA teacher copies."""

    def __init__(self, backbone: nn.Module, cluster_head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.cluster_head = cluster_head

    def forward(self, x):
        return self.cluster_head(self.backbone(x))


def ema_teacher(backbone: nn.Module, cluster_head: nn.Module, momentum: float) -> AveragedModel:
    """An exponential moving average of backbone + cluster heads, never trained itself: its
    targets change less from step to step than the network's own. Update it with
    ``teacher.update_parameters(ClusterPredictor(backbone, cluster_head))`` after each optimizer
    step (the first call copies the weights)."""
    teacher = AveragedModel(ClusterPredictor(backbone, cluster_head), multi_avg_fn=get_ema_multi_avg_fn(momentum), use_buffers=True)
    teacher.requires_grad_(False)
    return teacher

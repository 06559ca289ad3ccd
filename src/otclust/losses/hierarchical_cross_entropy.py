"""DeeperCluster's two-level loss on the product of rotations and clusters.

A sample has a super-class y (one of S = 4m: its rotation crossed with its cluster group) and,
within that super-class, a sub-class z (its sub-cluster). One linear head predicts y among S;
one head per super-class predicts z among that super-class's sub-classes, and only the head of
the sample's own super-class is trained on it (Caron et al. 2019, eq. 3):

    L = 1/N sum_n [ l(g(x_n), y_n) + sum_s y_ns l(g_s(x_n), z_n) ],  l = -log softmax
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from otclust.precision import in_float32


@in_float32
def hierarchical_cross_entropy(super_logits: torch.Tensor, sub_logits: torch.Tensor, super_targets: torch.Tensor, sub_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (super-class loss, sub-class loss); the DeeperCluster loss is their sum.

    `super_logits`: B x S; `sub_logits`: B x S x k, every super-class head applied to every
    sample (only the row of the sample's super-class enters the loss); `super_targets`: B in
    [0, S); `sub_targets`: B in [0, k).
    """
    super_loss = F.cross_entropy(super_logits, super_targets)
    own = sub_logits[torch.arange(len(super_targets), device=sub_logits.device), super_targets]
    sub_loss = F.cross_entropy(own, sub_targets)
    return super_loss, sub_loss

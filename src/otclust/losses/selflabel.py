"""SCAN's self-labelling loss (Van Gansbeke et al., ECCV 2020): confident samples teach their
augmented view, with class weights against the large clusters absorbing the small ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from otclust.distributed import all_reduce_sum, is_distributed, world_size
from otclust.precision import in_float32


@in_float32
def selflabel_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, share of confident samples) for one head: the argmax of the un-augmented view's
    prediction (`weak_logits`, no gradient) is the label of the augmented view (`strong_logits`)
    wherever its probability exceeds `threshold`; each class weighs inversely to its confident count.

    With several processes the counts and the weight total are the global batch's (all-reduced),
    so the mean of this over processes is the single-process loss of the global batch."""
    n_clusters = strong_logits.shape[1]
    confidence, target = torch.softmax(weak_logits.detach(), dim=1).max(dim=1)
    mask = confidence > threshold
    counts = torch.bincount(target[mask], minlength=n_clusters).float()
    if is_distributed():
        counts = all_reduce_sum(counts)
    weight = torch.where(counts > 0, counts.sum() / (counts * n_clusters).clamp(min=1), torch.zeros_like(counts))
    weight_total = float((counts * weight).sum())
    if weight_total == 0 or not mask.any():
        return strong_logits.sum() * 0.0, mask.float().mean()
    local = F.cross_entropy(strong_logits[mask], target[mask], weight=weight, reduction="sum")
    return local * (world_size() if is_distributed() else 1) / weight_total, mask.float().mean()

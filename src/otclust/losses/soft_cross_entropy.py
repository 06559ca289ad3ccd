"""Cross-entropy against soft targets, the loss with which a network learns OT pseudo-labels."""

from __future__ import annotations

import torch

from otclust.precision import in_float32


@in_float32
def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over samples of -sum_k targets_ik log softmax(logits)_ik; targets rows sum to 1."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()

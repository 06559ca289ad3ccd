"""Cross-entropy of one or several classifier heads against hard pseudo-labels.

SeLa trains each of its heads on its own Sinkhorn labels and averages the heads' losses;
DeepCluster is the one-head case (the classifier against the k-means labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from otclust.precision import in_float32


@in_float32
def multi_head_cross_entropy(logits: list[torch.Tensor] | torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over heads h of mean over samples i of -log softmax(logits[h])_{i, labels[h, i]}.

    `logits`: a list of H tensors B x K_h (or one B x K tensor for a single head); `labels`:
    H x B integer labels (or B for a single head).
    """
    return per_head_cross_entropy(logits, labels).mean()


@in_float32
def per_head_cross_entropy(logits: list[torch.Tensor] | torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The H losses whose mean `multi_head_cross_entropy` returns (to pick the best head)."""
    if torch.is_tensor(logits):
        logits = [logits]
    if labels.dim() == 1:
        labels = labels.unsqueeze(0)
    if len(logits) != labels.shape[0]:
        raise ValueError(f"{len(logits)} heads of logits but {labels.shape[0]} rows of labels")
    return torch.stack([F.cross_entropy(head, target) for head, target in zip(logits, labels)])

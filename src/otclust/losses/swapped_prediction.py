"""SwAV's swapped prediction: the code of one view is predicted from every other view.

With views v = 1..V, prototype scores s_v = z_v^T C (unit vectors, cosine similarities) and
codes q_a (Sinkhorn assignments, rows summing to 1) computed for the first A views only (the
large crops; small multi-crop views are never assigned), the loss is

    L = 1/A sum_{a<A} 1/(V-1) sum_{v != a} mean_i [ -sum_k q_a[i,k] log softmax(s_v[i] / tau)_k ]

(Caron et al. 2020, eq. 3, with the averaging of the reference code facebookresearch/swav).
"""

from __future__ import annotations

import torch

from otclust.precision import in_float32


@in_float32
def swapped_prediction_loss(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """`scores`: V tensors B x K (prototype scores of each view); `codes`: A <= V tensors B x K
    (targets for views 0..A-1, no gradient); `temperature`: tau of the softmax."""
    views = len(scores)
    if views < 2 or not 1 <= len(codes) <= views:
        raise ValueError(f"need at least 2 views and 1..{views} codes, got {views} views and {len(codes)} codes")
    log_probs = [torch.log_softmax(s / temperature, dim=1) for s in scores]
    total = scores[0].new_zeros((), dtype=torch.float32)
    for a, q in enumerate(codes):
        sub = sum(-(q * log_probs[v]).sum(dim=1).mean() for v in range(views) if v != a)
        total = total + sub / (views - 1)
    return total / len(codes)

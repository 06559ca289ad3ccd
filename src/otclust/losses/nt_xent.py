"""SimCLR's normalized-temperature cross-entropy between two views of a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Each of the 2N vectors must pick its partner view among the 2N - 1 others.

    Cosine similarities divided by `temperature`; the self-similarity is excluded from the
    softmax. Averaged over all 2N anchors.
    """
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b], dim=0), dim=1)
    logits = (z @ z.T) / temperature
    logits.fill_diagonal_(float("-inf"))
    partners = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partners)

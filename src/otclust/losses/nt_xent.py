"""SimCLR's normalized-temperature cross-entropy between two views of a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from otclust.distributed import all_gather_with_grad, is_distributed, rank
from otclust.precision import in_float32


@in_float32
def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5, gather: bool = False) -> torch.Tensor:
    """Each of the 2N vectors must pick its partner view among the 2N - 1 others.

    Cosine similarities divided by `temperature`; the self-similarity is excluded from the
    softmax. Averaged over all 2N anchors.

    `gather=True` with several processes (each holding its rows of one global batch, all of the
    same size): the anchors stay this process's 2n vectors and their positives stay local, but the
    negatives are the vectors of every process (gathered with gradients), i.e. the result is the
    global-batch loss restricted to this process's anchors. The mean over processes (what
    DistributedDataParallel's gradient averaging optimises) is then the single-process loss on the
    global batch. In a single process `gather` changes nothing.
    """
    if gather and is_distributed():
        return _gathered_nt_xent(z_a, z_b, temperature)
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b], dim=0), dim=1)
    logits = (z @ z.T) / temperature
    logits.fill_diagonal_(float("-inf"))
    partners = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partners)


def _gathered_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    n = z_a.shape[0]
    z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    all_a, all_b = all_gather_with_grad(z_a), all_gather_with_grad(z_b)
    total = all_a.shape[0]  # N, the global batch
    # Columns as in the single-process loss: the N first views, then the N second views.
    keys = torch.cat([all_a, all_b], dim=0)
    anchors = torch.cat([z_a, z_b], dim=0)
    logits = (anchors @ keys.T) / temperature  # 2n x 2N
    local = torch.arange(n, device=z_a.device) + rank() * n  # this process's rows in all_a / all_b
    own_column = torch.cat([local, local + total])
    partners = torch.cat([local + total, local])
    rows = torch.arange(2 * n, device=z_a.device)
    logits = logits.index_put((rows, own_column), torch.tensor(float("-inf"), device=z_a.device, dtype=logits.dtype))
    return F.cross_entropy(logits, partners)

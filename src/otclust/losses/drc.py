"""The three losses of Deep Robust Clustering (Zhong et al., "Deep Robust Clustering by Contrastive
Learning", 2020), as plain functions of one batch seen in two views.

For N samples and K clusters, ``z, z'`` are the N x K assignment features (the cluster head's
logits) of the two views and ``p, p'`` the N x K assignment probabilities (their softmax). The
paper's Eq. 5, 8, 9 are:

* assignment feature loss (sample-level InfoNCE, one direction, the denominator runs over the
  other view's samples, the positive included):
  ``L_AF = -1/N sum_i log( exp(s(z_i, z'_i)/T) / sum_j exp(s(z_i, z'_j)/T) )``
* assignment probability loss (cluster-level InfoNCE over the K columns ``q_k = p[:, k]``):
  ``L_AP = -1/K sum_k log( exp(s(q_k, q'_k)/T) / sum_l exp(s(q_k, q'_l)/T) )``
* cluster regularization (group-lasso-like, smallest when clusters have equal mass):
  ``L_CR = 1/N sum_k ( sum_i p_ik )^2``

The paper writes the similarity ``s`` as a plain dot product ``z_i^T z'_j``. With its temperatures
(T = 0.5 and 0.95, SimCLR's values) only the cosine similarity is meaningful: raw dot products of
logits are unbounded (the loss can then be lowered by inflating the logits) and those of
probability columns grow with the batch size (exp(N/K/T) overflows). The closest public code of
the same lineage (DCDC, a fork of PICA by a related group) L2-normalises both the sample rows and
the cluster columns, and so do the instance/cluster contrastive losses DRC inspired (CC). The
functions therefore default to ``normalize=True`` (cosine similarity); ``normalize=False`` gives
the literal dot-product formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from otclust.precision import in_float32

__all__ = ["assignment_feature_loss", "assignment_probability_loss", "cluster_regularization"]


def _info_nce(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float, normalize: bool) -> torch.Tensor:
    """Row r of `anchors` must pick row r of `candidates` among all rows of `candidates`."""
    if anchors.shape != candidates.shape or anchors.dim() != 2:
        raise ValueError(f"expected two matrices of the same shape, got {tuple(anchors.shape)} and {tuple(candidates.shape)}")
    if normalize:
        anchors = F.normalize(anchors, dim=1)
        candidates = F.normalize(candidates, dim=1)
    logits = anchors @ candidates.T / temperature
    targets = torch.arange(len(anchors), device=anchors.device)
    return F.cross_entropy(logits, targets)


@in_float32
def assignment_feature_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5, normalize: bool = True) -> torch.Tensor:
    """DRC's L_AF (Eq. 5): InfoNCE over the N samples between the views' assignment features.

    Args:
        z_a, z_b: N x K assignment features (cluster logits) of the two views.
        temperature: T (0.5 in the paper).
        normalize: cosine similarity (default) or the literal dot product ``z_i^T z'_j``.
    """
    return _info_nce(z_a, z_b, temperature, normalize)


@in_float32
def assignment_probability_loss(p_a: torch.Tensor, p_b: torch.Tensor, temperature: float = 0.95, normalize: bool = True) -> torch.Tensor:
    """DRC's L_AP (Eq. 8): InfoNCE over the K cluster columns of the assignment probabilities.

    Column k of ``p_a`` (which samples of view a go to cluster k) must match column k of ``p_b``
    among all K columns of ``p_b``: clusters become consistent across views and distinct from
    each other.

    Args:
        p_a, p_b: N x K assignment probabilities (rows sum to 1) of the two views.
        temperature: T (0.95 in the paper).
        normalize: cosine similarity of the columns (default) or the literal dot product.
    """
    return _info_nce(p_a.T, p_b.T, temperature, normalize)


@in_float32
def cluster_regularization(p: torch.Tensor) -> torch.Tensor:
    """DRC's L_CR (Eq. 9): ``1/N sum_k (sum_i p_ik)^2``.

    With rows summing to 1 it lies between N/K (equal cluster masses) and N (all in one cluster).
    """
    return (p.sum(dim=0) ** 2).sum() / p.shape[0]

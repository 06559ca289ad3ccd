"""Loss functions, one small module each, usable outside otclust's methods."""

from otclust.losses.nt_xent import nt_xent_loss
from otclust.losses.soft_cross_entropy import soft_cross_entropy

__all__ = ["nt_xent_loss", "soft_cross_entropy"]

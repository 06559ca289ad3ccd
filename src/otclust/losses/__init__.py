"""Loss functions, one small module each, usable outside otclust's methods."""

from otclust.losses.drc import assignment_feature_loss, assignment_probability_loss, cluster_regularization
from otclust.losses.hierarchical_cross_entropy import hierarchical_cross_entropy
from otclust.losses.multi_head_cross_entropy import multi_head_cross_entropy, per_head_cross_entropy
from otclust.losses.nt_xent import nt_xent_loss
from otclust.losses.soft_cross_entropy import soft_cross_entropy
from otclust.losses.swapped_prediction import swapped_prediction_loss

__all__ = [
    "assignment_feature_loss",
    "assignment_probability_loss",
    "cluster_regularization",
    "hierarchical_cross_entropy",
    "multi_head_cross_entropy",
    "nt_xent_loss",
    "per_head_cross_entropy",
    "soft_cross_entropy",
    "swapped_prediction_loss",
]

import math

import pytest
import torch

from otclust.losses.drc import assignment_feature_loss, assignment_probability_loss, cluster_regularization


def _similarity(u, v, normalize):
    if normalize:
        return float(u @ v) / (float(u.norm()) * float(v.norm()))
    return float(u @ v)


def _info_nce_by_loops(a, b, temperature, normalize):
    """-1/R sum_r log( exp(s(a_r, b_r)/T) / sum_j exp(s(a_r, b_j)/T) ), written out."""
    rows = a.shape[0]
    total = 0.0
    for r in range(rows):
        numerator = math.exp(_similarity(a[r], b[r], normalize) / temperature)
        denominator = sum(math.exp(_similarity(a[r], b[j], normalize) / temperature) for j in range(rows))
        total -= math.log(numerator / denominator)
    return total / rows


@pytest.mark.parametrize("normalize", [True, False])
def test_assignment_feature_loss_is_eq5(normalize):
    torch.manual_seed(0)
    z_a, z_b = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    expected = _info_nce_by_loops(z_a, z_b, 0.5, normalize)
    assert assignment_feature_loss(z_a, z_b, 0.5, normalize).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_assignment_probability_loss_is_eq8_over_cluster_columns(normalize):
    torch.manual_seed(1)
    p_a = torch.softmax(torch.randn(7, 3, dtype=torch.float64), dim=1)
    p_b = torch.softmax(torch.randn(7, 3, dtype=torch.float64), dim=1)
    columns_a = [p_a[:, k] for k in range(3)]
    columns_b = [p_b[:, k] for k in range(3)]
    expected = _info_nce_by_loops(torch.stack(columns_a), torch.stack(columns_b), 0.95, normalize)
    assert assignment_probability_loss(p_a, p_b, 0.95, normalize).item() == pytest.approx(expected, rel=1e-5)


def test_cluster_regularization_is_eq9_and_smallest_for_equal_masses():
    torch.manual_seed(2)
    p = torch.softmax(torch.randn(5, 4, dtype=torch.float64), dim=1)
    n, k = p.shape
    expected = sum(sum(float(p[i, c]) for i in range(n)) ** 2 for c in range(k)) / n
    assert cluster_regularization(p).item() == pytest.approx(expected, rel=1e-6)
    uniform = torch.full((8, 4), 0.25)
    collapsed = torch.zeros(8, 4)
    collapsed[:, 0] = 1.0
    assert cluster_regularization(uniform).item() == pytest.approx(8 / 4)  # N / K
    assert cluster_regularization(collapsed).item() == pytest.approx(8.0)  # N


def test_losses_are_lower_for_matching_views_and_have_gradients():
    torch.manual_seed(3)
    logits = torch.randn(16, 5, requires_grad=True)
    other = torch.randn(16, 5)
    same = assignment_feature_loss(logits, logits.detach() + 0.01 * other)
    different = assignment_feature_loss(logits, other)
    assert same < different
    probs = torch.softmax(logits * 4, dim=1)
    assert assignment_probability_loss(probs, probs.detach()) < assignment_probability_loss(probs, torch.softmax(other * 4, dim=1))
    (same + assignment_probability_loss(probs, probs.detach()) + cluster_regularization(probs)).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        assignment_feature_loss(torch.randn(4, 3), torch.randn(5, 3))

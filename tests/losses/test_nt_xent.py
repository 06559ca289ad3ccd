import math

import pytest
import torch

from otclust.losses import nt_xent_loss


def direct_nt_xent(z_a, z_b, tau):
    """SimCLR's loss written as in the paper: a loop over anchors."""
    z = torch.cat([z_a, z_b]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        numerator = math.exp(float(z[i] @ z[j]) / tau)
        denominator = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(numerator / denominator)
    return total / n2


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_direct_formula(tau):
    torch.manual_seed(0)
    z_a, z_b = torch.randn(5, 7), torch.randn(5, 7)
    assert float(nt_xent_loss(z_a, z_b, tau)) == pytest.approx(direct_nt_xent(z_a, z_b, tau), rel=1e-5)


def test_nt_xent_is_low_when_views_agree_and_high_when_they_do_not():
    torch.manual_seed(0)
    z = torch.randn(16, 32)
    assert nt_xent_loss(z, z + 0.01 * torch.randn_like(z), 0.1) < nt_xent_loss(z, torch.randn(16, 32), 0.1)

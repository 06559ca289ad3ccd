import pytest
import torch

from otclust.losses.swapped_prediction import swapped_prediction_loss


def test_swapped_prediction_matches_its_formula():
    torch.manual_seed(0)
    views = [torch.randn(4, 3) for _ in range(4)]  # 2 large views (assigned) + 2 small ones
    codes = [torch.softmax(torch.randn(4, 3), dim=1) for _ in range(2)]
    tau = 0.1

    def ell(scores, q):  # -sum_k q_k log p_k, p = softmax(scores / tau), averaged over samples
        p = torch.exp(scores / tau) / torch.exp(scores / tau).sum(dim=1, keepdim=True)
        return -(q * torch.log(p)).sum(dim=1).mean()

    expected = sum(sum(ell(views[v], codes[a]) for v in range(4) if v != a) / 3 for a in range(2)) / 2
    assert float(swapped_prediction_loss(views, codes, tau)) == pytest.approx(float(expected), rel=1e-5)
    # Two views: the symmetric SwAV loss (l(z_t, q_s) + l(z_s, q_t)) / 2.
    two = swapped_prediction_loss(views[:2], codes, tau)
    assert float(two) == pytest.approx(float((ell(views[0], codes[1]) + ell(views[1], codes[0])) / 2), rel=1e-5)

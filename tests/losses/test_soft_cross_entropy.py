import pytest
import torch

from otclust.losses import soft_cross_entropy


def test_soft_cross_entropy_matches_formula_and_hard_labels():
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    targets = torch.softmax(torch.randn(4, 3), dim=1)
    expected = -(targets * torch.log(torch.softmax(logits, 1))).sum(1).mean()
    assert float(soft_cross_entropy(logits, targets)) == pytest.approx(float(expected), rel=1e-6)
    hard = torch.tensor([0, 2, 1, 1])
    one_hot = torch.nn.functional.one_hot(hard, 3).float()
    assert float(soft_cross_entropy(logits, one_hot)) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, hard)), rel=1e-6)

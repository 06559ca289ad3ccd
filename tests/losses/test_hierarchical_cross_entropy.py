import pytest
import torch

from otclust.losses.hierarchical_cross_entropy import hierarchical_cross_entropy


def test_only_the_own_super_class_head_enters_the_sub_class_loss():
    torch.manual_seed(0)
    b, s, k = 6, 4, 3
    super_logits, sub_logits = torch.randn(b, s), torch.randn(b, s, k)
    y, z = torch.tensor([0, 1, 2, 3, 1, 0]), torch.tensor([2, 0, 1, 1, 2, 0])

    def nll(logits, target):
        return -torch.log_softmax(logits, dim=0)[target]

    # eq. (4): l(g(x), y) + sum_s y_s l(g_s(x), z), averaged over the batch
    super_expected = sum(nll(super_logits[n], y[n]) for n in range(b)) / b
    sub_expected = sum(sum(float(y[n] == t) * nll(sub_logits[n, t], z[n]) for t in range(s)) for n in range(b)) / b
    super_loss, sub_loss = hierarchical_cross_entropy(super_logits, sub_logits, y, z)
    assert float(super_loss) == pytest.approx(float(super_expected), rel=1e-6)
    assert float(sub_loss) == pytest.approx(float(sub_expected), rel=1e-6)
    # The other heads get no gradient from a sample.
    sub_logits.requires_grad_(True)
    hierarchical_cross_entropy(super_logits, sub_logits, y, z)[1].backward()
    for n in range(b):
        for t in range(s):
            assert bool((sub_logits.grad[n, t] != 0).any()) == (t == int(y[n]))

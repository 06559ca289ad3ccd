import pytest
import torch

from otclust.losses.multi_head_cross_entropy import multi_head_cross_entropy, per_head_cross_entropy


def test_mean_over_heads_of_the_negative_log_softmax_of_the_label():
    torch.manual_seed(0)
    logits = [torch.randn(5, 3), torch.randn(5, 4)]
    labels = torch.tensor([[0, 2, 1, 1, 0], [3, 0, 2, 1, 3]])
    per_head = []
    for head, target in zip(logits, labels):
        probs = torch.exp(head) / torch.exp(head).sum(dim=1, keepdim=True)
        per_head.append(-torch.log(probs[torch.arange(5), target]).mean())
    assert torch.allclose(per_head_cross_entropy(logits, labels), torch.stack(per_head), atol=1e-6)
    assert float(multi_head_cross_entropy(logits, labels)) == pytest.approx(float(sum(per_head) / 2), rel=1e-6)
    # One head: a tensor and a 1-d label vector (DeepCluster's case).
    assert float(multi_head_cross_entropy(logits[0], labels[0])) == pytest.approx(float(per_head[0]), rel=1e-6)

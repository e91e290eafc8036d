"""The batch contract in a plain loop: the network's output says the task, `first` says where a
language model's stream starts."""
import torch

from conftest import tiny_lm
from nas_mpq.metrics import forward_batch, stream_metrics
from search_spaces.cnn import ResNetCNN


def test_the_network_says_the_task_and_first_says_where_a_stream_starts():
    net = tiny_lm(vocab=20, dim=8).eval()
    x, y = torch.randint(0, 20, (2, 5)), torch.randint(0, 20, (2, 5))
    fresh = forward_batch(net, (x, y), None)
    assert not fresh.classifier and fresh.logits.shape == (10, 20) and fresh.targets.shape == (10,)
    carried = forward_batch(net, (x, y, False), fresh.hidden)
    assert not torch.allclose(carried.logits, fresh.logits)  # the hidden state came along
    assert torch.equal(forward_batch(net, (x, y, True), fresh.hidden).logits, fresh.logits)
    assert torch.equal(forward_batch(net, (x, y), fresh.hidden).logits, fresh.logits)  # no `first`: afresh
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    out = forward_batch(ResNetCNN(width=4, stages=1).eval(), (images, labels), None)
    assert out.classifier and out.logits.shape == (4, 10) and out.hidden is None
    assert set(stream_metrics(tiny_lm(vocab=20, dim=8), [(x, y)])) == {"ppl"}
    assert set(stream_metrics(ResNetCNN(width=4, stages=1), [(images, labels)])) == {"ppl", "acc"}


def test_a_network_returning_logits_per_position_alone_is_a_language_model():
    class PlainLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 20)

        def forward(self, x):
            return self.out(self.emb(x))  # (B, T, V), no hidden state

    net = PlainLM().eval()
    x, y = torch.randint(0, 20, (2, 5)), torch.randint(0, 20, (2, 5))
    out = forward_batch(net, (x, y), None)
    assert not out.classifier and out.hidden is None
    assert out.logits.shape == (10, 20) and torch.equal(out.targets, y.reshape(-1))
    expected = torch.nn.functional.cross_entropy(net(x).reshape(-1, 20), y.reshape(-1)).exp()
    metrics = stream_metrics(net, [(x, y)])
    assert set(metrics) == {"ppl"} and abs(metrics["ppl"] - float(expected)) < 1e-3

"""Under a soft sample, the groups that are equal blocks of one weight (an LSTM weight's gates,
attention heads of Q, K, V by rows and of O by columns, blocks of a convolution's channels) are
quantized together in one pass: the same composite weight as group by group, the same gradients
up to the order of float sums, and one scale fit per weight instead of one per group."""
import pytest
import torch

from conftest import tiny_lm
from nas_mpq.quant import functional as F
from nas_mpq.quant import make_quantizer
from nas_mpq.search import GroupRule, fuse_candidates, GumbelSampler, MixedPrecisionChoice, SearchSpace, prepare_search_
from nas_mpq.search import layers as search_layers
from nas_mpq.search import choice as choice_module
from nas_mpq.search.choice import STACKED_ELEMENTS, block_composite
from search_spaces.cnn import ResNetCNN, cnn_space
from search_spaces.lstm_lm import lstm_lm_space
from search_spaces.transformer_lm import TransformerLM, transformer_lm_space

MODELS = {
    "lstm_gates": lambda: (tiny_lm(vocab=40, dim=16), lstm_lm_space()),
    "transformer_heads": lambda: (TransformerLM(40, 16, 2, 2, max_len=8, dropout=0.0),
                                  transformer_lm_space(grouping="head", blocks=2)),
    "cnn_blocks": lambda: (ResNetCNN(10, width=8), cnn_space(grouping="block", blocks=2)),
}


def soft_step(name: str, fuse: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and gradients of one soft-sampled forward and backward of a fresh supernet, in float64
    (so that the order of the float sums leaves the gradients equal to about 1e-12)."""
    torch.manual_seed(0)
    net, space = MODELS[name]()
    prepare_search_(net.double(), space, sampler=GumbelSampler(tau=1.0, seed=0)).train()
    fuse_candidates(net, fuse)
    out = net(*(t.double() if t.is_floating_point() else t for t in net.example_input(4)))
    loss = (out[0] if isinstance(out, tuple) else out).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def taking_the_pass(monkeypatch) -> list[bool]:
    """Record, for every weight split into equal blocks in a sampled forward (not the evaluation
    forwards of preparing a model), whether its groups took the one pass."""
    taken: list[bool] = []

    def recording(blocks, choices):
        out = block_composite(blocks, choices)
        if choices[0].sample is not None:
            taken.append(out is not None)
        return out
    monkeypatch.setattr(search_layers, "block_composite", recording)
    return taken


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_pass_equals_group_by_group(name, monkeypatch):
    taken = taking_the_pass(monkeypatch)
    loss, grads = soft_step(name)
    assert taken and all(taken)  # the model's block groups took the pass, every one
    monkeypatch.setattr(search_layers, "block_composite", lambda *a: None)
    loss_by_group, grads_by_group = soft_step(name)
    assert torch.equal(loss, loss_by_group)  # the forward is the same to the bit
    assert grads.keys() == grads_by_group.keys() and any(".theta" in n for n in grads)
    for n, g in grads.items():
        assert torch.allclose(g, grads_by_group[n], rtol=1e-9, atol=1e-12), n


@pytest.mark.parametrize("axis", [0, 1])
def test_large_blocks_by_rows_or_columns_equal_group_by_group(axis, monkeypatch):
    """Blocks past STACKED_ELEMENTS over their candidates: quantized into one buffer and again in
    the backward, the gradient of blocks of columns copied into block order."""
    def step(net):
        x = torch.randn(8, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        loss = net(x).square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}

    def supernet():
        torch.manual_seed(0)
        space = SearchSpace("heads", [1, 2, 4, 8, 32], [GroupRule("*", grouping="head", blocks=4, axis=axis)])
        net = prepare_search_(torch.nn.Sequential(torch.nn.Linear(256, 256)).double(), space,
                              sampler=GumbelSampler(tau=1.0, seed=0)).train()
        assert 5 * net[0].weight.numel() > STACKED_ELEMENTS
        return net

    taken = taking_the_pass(monkeypatch)
    loss, grads = step(supernet())
    assert taken == [True]
    monkeypatch.setattr(search_layers, "block_composite", lambda *a: None)
    loss_by_group, grads_by_group = step(supernet())
    assert torch.equal(loss, loss_by_group)
    for n, g in grads.items():
        assert torch.allclose(g, grads_by_group[n], rtol=1e-9, atol=1e-12), n


def test_blocks_whose_fit_would_pass_its_memory_bound_go_group_by_group(monkeypatch):
    blocks = torch.randn(3, 8, 8)
    monkeypatch.setattr(choice_module, "FIT_BATCH_ELEMENTS", F.fit_pass_elements(3 * 64) - 1)
    assert block_composite(blocks, _choices(3)) is None
    monkeypatch.setattr(choice_module, "FIT_BATCH_ELEMENTS", F.fit_pass_elements(3 * 64))
    assert block_composite(blocks, _choices(3)) is not None


def test_the_scales_of_a_weight_are_fitted_once_not_per_group(monkeypatch):
    fits = []
    real_fit = F._fit
    monkeypatch.setattr(F, "_fit", lambda *a: fits.append(a[0].shape) or real_fit(*a))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.LSTM(16, 16, num_layers=2))
    prepare_search_(net, SearchSpace("lstm", [1, 2, 4, 8, 32], [GroupRule("*", grouping="gate")]),
                    sampler=GumbelSampler(tau=1.0, seed=0)).train()
    net(torch.randn(5, 3, 16))
    # four weights of four gates each: one fit of every width (2, 4, 8) per weight, four scales each
    assert len(fits) == 4 and all(shape[0] == 4 for shape in fits)


@pytest.mark.parametrize("shape", [(4, 8, 16), (3, 300, 300), (2, 70000), (4, 16, 3, 3, 3)])
def test_block_scales_equal_each_block_fitted_alone(shape):
    """Also for blocks past FIT_SAMPLE (the fit reads a sample of each), on two threads."""
    torch.manual_seed(0)
    w = torch.distributions.StudentT(3.0).sample(shape)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stats = F.WeightStats(w, widths=(1, 2, 4, 8), per_block=True)
        for bits in (2, 1, 4, 8):
            s = stats.scale(bits)
            assert s.shape == (shape[0],) + (1,) * (len(shape) - 1)
            for n in range(shape[0]):
                assert torch.equal(s[n].reshape(()), F.fit_scale(w[n], bits)), (bits, n)
    finally:
        torch.set_num_threads(threads)


def _choices(n: int, candidates=(1, 2, 4, 32), method: str = "uniform") -> list[MixedPrecisionChoice]:
    w = torch.randn(8, 8)
    choices = [MixedPrecisionChoice([make_quantizer(b, w, method) for b in candidates]) for _ in range(n)]
    for c in choices:
        c.sample = GumbelSampler(tau=1.0).sample(c.theta)
    return choices


def test_other_choices_are_computed_group_by_group():
    blocks = torch.randn(3, 8, 8)
    assert block_composite(blocks, _choices(3)) is not None
    hard = _choices(3)
    hard[1].set_sample(torch.tensor([0.0, 1.0, 0.0, 0.0]), 1)  # a hard sample quantizes its pick alone
    assert block_composite(blocks, hard) is None
    assert block_composite(blocks, _choices(2) + _choices(1, (1, 2, 8, 32))) is None  # other candidates
    assert block_composite(blocks, _choices(3, (2, 4), method="lsq")) is None  # learned scales
    evaluation = _choices(3)
    evaluation[0].sample = None  # the argmax
    assert block_composite(blocks, evaluation) is None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fused_candidates_give_the_unfused_step(name, monkeypatch, uncompiled_fusion):
    """fuse_candidates: every soft composite (blocks, whole weights, an embedding's looked-up rows)
    through the one-pass functions (run uncompiled here), the loss and every gradient (weights,
    theta) those of the unfused step up to the order of float sums."""
    soft: list[tuple] = []  # the composites of more than one candidate that take an unfused path
    stacks = choice_module._stacks
    monkeypatch.setattr(choice_module, "_stacks",
                        lambda w, active, qs: (len(active) > 1 and soft.append(w.shape)) or stacks(w, active, qs))
    loss, grads = soft_step(name)
    unfused, soft[:] = list(soft), []
    loss_fused, grads_fused = soft_step(name, fuse=True)
    assert unfused and not soft and uncompiled_fusion == unfused  # every soft composite took the one pass
    torch.testing.assert_close(loss_fused, loss, rtol=1e-12, atol=0)
    assert grads_fused.keys() == grads.keys()
    for n in grads:
        torch.testing.assert_close(grads_fused[n], grads[n], rtol=1e-9, atol=1e-12, msg=n)

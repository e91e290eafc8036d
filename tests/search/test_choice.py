import pytest
import torch

from nas_mpq.quant import fused, make_quantizer
from nas_mpq.search import GumbelSampler, MixedPrecisionChoice

CANDIDATES = [1, 2, 4, 8, 32]


def make_choice(w, method="uniform", candidates=CANDIDATES):
    return MixedPrecisionChoice([make_quantizer(b, w, method) for b in candidates])


@pytest.fixture
def w():
    torch.manual_seed(1)
    return torch.randn(12, 7)


@pytest.mark.parametrize("method", ["uniform", "lsq"])
def test_one_hot_choice_equals_single_quantizer_exactly(w, method):
    choice = make_choice(w, method)
    for k, bits in enumerate(CANDIDATES):
        choice.sample = torch.nn.functional.one_hot(torch.tensor(k), len(CANDIDATES)).float()
        single = choice.quantizers[k](w)
        assert torch.equal(choice.composite(w), single), bits


def test_eval_uses_argmax_one_hot(w):
    choice = make_choice(w)
    with torch.no_grad():
        choice.theta[2] = 3.0
    assert choice.argmax_bits() == 4
    assert torch.equal(choice.composite(w), choice.quantizers[2](w))


@pytest.mark.parametrize("method", ["uniform", "lsq"])
def test_composite_gradients_equal_naive_autograd_sum(w, method):
    choice = make_choice(w, method, candidates=[0, 1, 2, 4, 8, 16, 32])
    y = torch.softmax(torch.randn(7), 0)
    g = torch.randn_like(w)

    w1, y1 = w.clone().requires_grad_(True), y.clone().requires_grad_(True)
    choice.sample = y1
    choice.composite(w1).backward(g)
    scale_grads = [q.scale.grad.clone() for q in choice.quantizers if hasattr(q, "scale")]
    choice.zero_grad()

    w2, y2 = w.clone().requires_grad_(True), y.clone().requires_grad_(True)
    naive = sum(y2[k] * q(w2) for k, q in enumerate(choice.quantizers))
    naive.backward(g)
    naive_scale = [q.scale.grad.clone() for q in choice.quantizers if hasattr(q, "scale")]

    assert torch.allclose(w1.grad, w2.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(y1.grad, y2.grad, rtol=1e-5, atol=1e-5)
    assert len(scale_grads) == (3 if method == "lsq" else 0)
    for a, b in zip(scale_grads, naive_scale):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_composite_value_is_weighted_sum(w):
    choice = make_choice(w)
    y = torch.softmax(torch.randn(5), 0)
    choice.sample = y
    expected = sum(y[k] * q(w) for k, q in enumerate(choice.quantizers))
    assert torch.allclose(choice.composite(w), expected, atol=1e-6)


def test_sampler_is_seeded_and_restorable():
    theta = torch.randn(5)
    a, b = GumbelSampler(tau=1.0, seed=3), GumbelSampler(tau=1.0, seed=3)
    assert torch.equal(a.sample(theta), b.sample(theta))
    state = a.state_dict()
    x = a.sample(theta)
    c = GumbelSampler(seed=99)
    c.load_state_dict(state)
    assert torch.equal(c.sample(theta), x)
    assert c.tau == 1.0


def test_sampler_soft_and_hard():
    theta = torch.zeros(4, requires_grad=True)
    soft = GumbelSampler(tau=0.5, seed=0).sample(theta)
    assert torch.allclose(soft.sum(), torch.tensor(1.0)) and (soft > 0).all()
    hard = GumbelSampler(tau=0.5, hard=True, seed=0).sample(theta)
    assert sorted(hard.detach().tolist()) == [0.0, 0.0, 0.0, 1.0]
    (hard * torch.arange(4.0)).sum().backward()
    assert theta.grad.abs().sum() > 0  # straight-through gradient reaches theta
    with pytest.raises(ValueError, match="temperature"):
        GumbelSampler(tau=0.0)


def test_low_temperature_concentrates():
    """At a low temperature each soft sample is nearly one-hot; at a high one it is spread (the
    argmax alone is the same at any temperature, so the largest weight is what is checked)."""
    theta = torch.tensor([0.0, 2.0, 0.0])

    def mean_largest(tau):
        sampler = GumbelSampler(tau=tau, seed=0)
        return sum(float(sampler.sample(theta).max()) for _ in range(400)) / 400

    cold, hot = mean_largest(0.05), mean_largest(5.0)
    assert cold > 0.95 and hot < 0.6, (cold, hot)


def test_choice_rejects_duplicates(w):
    with pytest.raises(ValueError, match="distinct"):
        MixedPrecisionChoice([make_quantizer(4, w), make_quantizer(4, w)])


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("cands", [[1, 2, 4, 8, 32], [2]])
@pytest.mark.parametrize("size", [(40, 6), (5000, 64)])
def test_embedding_quantizes_looked_up_rows_like_the_whole_table(per_channel, cands, size):
    """SearchEmbedding quantizes only the rows a batch uses, with the whole table's statistics:
    the output and the gradients (weight and y) equal those of the composite of the whole table,
    also where the rows take the composite's stacked path and the whole table its buffered one."""
    from torch import nn
    from nas_mpq.search import choice as choice_module
    from nas_mpq.search.layers import SearchEmbedding

    torch.manual_seed(0)
    layer = SearchEmbedding.from_float(nn.Embedding(*size), lambda key, w: MixedPrecisionChoice(
        [make_quantizer(b, w, per_channel=per_channel) for b in cands]))
    choice = layer.choices["weight"]
    x, g = torch.randint(0, size[0], (3, 9)), torch.randn(3, 9, size[1])
    quantizers = list(choice.quantizers)
    assert choice_module._stacks(layer.weight, range(len(cands)), quantizers) == (len(cands) > 1 and size[0] < 1000)
    assert choice_module._stacks(layer.weight[:27], range(len(cands)), quantizers) == (len(cands) > 1)
    y = torch.softmax(torch.randn(len(cands)), 0)

    def run(forward):
        layer.zero_grad()
        if choice.theta is not None:
            choice.sample = y.clone().requires_grad_(True)
        out = forward()
        out.backward(g)
        y_grad = None if choice.theta is None else choice.sample.grad
        return out.detach(), layer.weight.grad.clone(), y_grad

    rows = run(lambda: layer(x))
    table = run(lambda: nn.functional.embedding(x, layer.composite_weight("weight")))
    assert torch.equal(rows[0], table[0])
    assert torch.allclose(rows[1], table[1], atol=1e-6)
    if choice.theta is not None:
        assert torch.allclose(rows[2], table[2], atol=1e-5)


def test_shared_scales_follow_the_weight_and_clear_on_request():
    from nas_mpq.quant import make_quantizer
    from nas_mpq.quant.functional import fit_scale
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 8))
    choice = MixedPrecisionChoice([make_quantizer(b, w) for b in (1, 4, 32)])
    first = choice.shared_stats(w)
    assert choice.shared_stats(w) is first  # the search step and the weight step share one fit
    with torch.no_grad():
        w.mul_(3.0)  # an in-place optimizer step bumps the version: a fresh fit
    assert torch.equal(choice.shared_stats(w).scale(4), fit_scale(w, 4))
    w.data.mul_(2.0)  # a write that bypasses the version counter (as fused optimizers do) ...
    choice.clear_stats()  # ... is why training loops clear the kept scales after every step
    assert torch.equal(choice.shared_stats(w).scale(4), fit_scale(w, 4))
    with torch.inference_mode():
        rows = w[:4] * 1.0
        assert torch.equal(choice.shared_stats(rows).scale(4), fit_scale(rows, 4))


def test_backward_quantizes_no_candidate_when_the_pick_is_a_constant(monkeypatch):
    """The argmax (or a pinned plan) mixes one candidate by a constant one-hot: the backward
    needs no dL/dy, so it quantizes nothing again; a sample's backward quantizes every candidate."""
    from nas_mpq.quant import make_quantizer
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 32))
    choice = MixedPrecisionChoice([make_quantizer(b, w) for b in (1, 2, 4, 8, 32)])
    calls = []
    for q in choice.quantizers:
        monkeypatch.setattr(q, "value", lambda *a, _v=q.value, _b=q.bits, **k: calls.append(_b) or _v(*a, **k))
    choice.sample = None  # the argmax
    choice.composite(w).sum().backward()
    assert calls == [choice.argmax_bits()] and w.grad is not None
    calls.clear()
    choice.sample = torch.softmax(torch.randn(5), 0).requires_grad_(True)
    big = torch.nn.Parameter(torch.randn(512, 256))  # past STACKED_ELEMENTS: the backward quantizes again
    choice.composite(big).sum().backward()
    assert sorted(calls) == sorted(2 * [1, 2, 4, 8, 32]) and choice.sample.grad is not None


def test_held_scales_survive_weight_changes_until_cleared():
    """hold_stats (the search's refit_every): the scales fitted last stay while the weight moves;
    clear_stats fits again; a weight's blocks and one of its groups are kept side by side."""
    from nas_mpq.quant import make_quantizer
    from nas_mpq.quant.functional import fit_scale
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 8))
    choice = MixedPrecisionChoice([make_quantizer(b, w) for b in (1, 4, 32)])
    choice.hold_stats = True
    first = choice.shared_stats(w)
    before = fit_scale(w, 4)
    assert torch.equal(first.scale(4), before)
    blocks = w.unflatten(0, (2, 8))
    by_block = choice.shared_stats(blocks, per_block=True)
    with torch.no_grad():
        w.mul_(3.0)
    assert choice.shared_stats(w) is first and torch.equal(choice.shared_stats(w).scale(4), before)
    assert choice.shared_stats(blocks, per_block=True) is by_block  # both kept
    choice.hold_stats = False  # the version counter counts again: a fresh fit
    assert torch.equal(choice.shared_stats(w).scale(4), fit_scale(w, 4))
    choice.hold_stats = True
    with torch.no_grad():
        w.mul_(2.0)
    choice.clear_stats()
    assert torch.equal(choice.shared_stats(w).scale(4), fit_scale(w, 4))


@pytest.mark.parametrize("method", ["uniform", "lsq"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_composite_equals_the_sum_of_separately_quantized_candidates_exactly(method, per_channel):
    """One buffer for every candidate in forward and backward changes no value: the result and
    dL/dy equal those from each candidate's own quantized copy."""
    torch.manual_seed(2)
    w = torch.randn(40, 12)
    cands = [0, 1, 2, 4, 8, 16, 32]
    choice = MixedPrecisionChoice([make_quantizer(b, w, method, per_channel) for b in cands])
    y = torch.softmax(torch.randn(len(cands)), 0)
    g = torch.randn_like(w)
    choice.sample = y.clone().requires_grad_(True)
    out = choice.composite(w)
    out.backward(g)
    copies = [q.value(w) for q in choice.quantizers]
    expected = copies[0] * y[0]
    for k in range(1, len(cands)):
        expected = torch.addcmul(expected, copies[k], y[k])
    assert torch.equal(out, expected)
    assert torch.equal(choice.sample.grad, torch.stack([torch.dot(g.reshape(-1), c.reshape(-1)) for c in copies]))


@pytest.mark.parametrize("stacked", [True, False])
@pytest.mark.parametrize("per_channel", [False, True])
def test_stacked_and_buffered_composites_agree_with_autograd(monkeypatch, stacked, per_channel):
    """A small weight's soft sample takes the stacked path (every candidate's value kept for the
    backward), a larger one the buffered path: both give the weighted sum and the gradients of
    the naive autograd sum."""
    from nas_mpq.search import choice as choice_module
    torch.manual_seed(3)
    w = torch.randn(24, 10)
    cands = [1, 2, 4, 8, 32]
    choice = MixedPrecisionChoice([make_quantizer(b, w, per_channel=per_channel) for b in cands])
    monkeypatch.setattr(choice_module, "STACKED_ELEMENTS", len(cands) * w.numel() if stacked else 0)
    assert choice_module._stacks(w, range(len(cands)), list(choice.quantizers)) == stacked
    y = torch.softmax(torch.randn(len(cands)), 0)
    g = torch.randn_like(w)
    w1, y1 = w.clone().requires_grad_(True), y.clone().requires_grad_(True)
    choice.sample = y1
    out = choice.composite(w1)
    out.backward(g)
    w2, y2 = w.clone().requires_grad_(True), y.clone().requires_grad_(True)
    naive = sum(y2[k] * q(w2) for k, q in enumerate(choice.quantizers))
    naive.backward(g)
    assert torch.allclose(out, naive, rtol=1e-6, atol=1e-6)
    assert torch.allclose(w1.grad, w2.grad, rtol=1e-6, atol=1e-6)
    assert torch.allclose(y1.grad, y2.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["16_bits", "lsq", "hard_sample", "argmax", "float16"])
def test_fuse_leaves_what_it_cannot_compute_exactly_unfused(monkeypatch, case):
    """With `fuse` set, a group with a 16-bit or LSQ candidate, a one-hot pick (hard sample, the
    argmax) and a float16 weight take the unfused path: the one-pass function is never called and
    the composite is the unfused one to the bit."""
    monkeypatch.setattr(fused, "_mix_compiled", lambda *args: pytest.fail("the one-pass function was called"))
    torch.manual_seed(5)
    w = torch.randn(20, 6, dtype=torch.float16 if case == "float16" else torch.float32)
    cands = [1, 2, 4, 16] if case == "16_bits" else CANDIDATES
    choice = MixedPrecisionChoice([make_quantizer(b, w, "lsq" if case == "lsq" else "uniform") for b in cands])
    y = torch.softmax(torch.randn(len(cands)), 0).to(w.dtype)
    if case == "hard_sample":
        choice.set_sample(torch.nn.functional.one_hot(torch.tensor(2), len(cands)).to(w.dtype), 2)
    elif case != "argmax":
        choice.sample = y
    expected = choice.composite(w)
    choice.fuse = True
    assert torch.equal(choice.composite(w), expected)

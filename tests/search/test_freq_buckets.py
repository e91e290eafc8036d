"""Frequency-bucketed embedding and softmax groups: row ranges of a frequency-sorted vocabulary,
each holding an equal share of tokens and rows averaged, through surgery, plans, ADMM and sensitivity."""
import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_lm
from nas_mpq.admm import ADMMState, on_table, project
from nas_mpq.plan import Budget
from nas_mpq.search import apply_plan_, derive_plan, prepare_search_, search_groups, uniform_plan
from nas_mpq.search.layers import zipf_bucket_rows
from nas_mpq.sensitivity import hawq_omega, hutchinson_traces, kl_sensitivity
from search_spaces.lstm_lm import lstm_lm_space
from search_spaces.transformer_lm import TransformerLM, transformer_lm_space


@pytest.mark.parametrize("rows,buckets", [(10000, 8), (50, 3), (5, 5), (7, 1)])
def test_buckets_cover_the_vocabulary_with_equal_shares_of_tokens_and_rows(rows, buckets):
    bounds = zipf_bucket_rows(rows, buckets)
    assert len(bounds) == buckets and bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:])) and all(hi > lo for lo, hi in bounds)
    freq = 1.0 / torch.arange(1, rows + 1, dtype=torch.float64)
    if rows == 10000:
        # the frequent words are few rows, the tail similar row ranges: none holds most of the table,
        # and each bucket's (token share + row share) / 2 is an eighth
        sizes = [hi - lo for lo, hi in bounds]
        assert sizes == sorted(sizes) and sizes[0] < 10 and sizes[-1] < 0.25 * rows
        blended = [float(freq[lo:hi].sum() / freq.sum() + (hi - lo) / rows) / 2 for lo, hi in bounds]
        assert all(abs(s - 1 / 8) < 0.005 for s in blended), blended
    with pytest.raises(ValueError, match="cannot split 3 vocabulary rows into 4 frequency buckets"):
        zipf_bucket_rows(3, 4)


@pytest.mark.parametrize("tie", [False, True])
def test_embedding_and_softmax_get_one_group_per_bucket(tie):
    net = prepare_search_(tiny_lm(vocab=60, dim=8, tie=tie), lstm_lm_space(freq_buckets=3))
    groups = {g.name: g.plan for g in search_groups(net)}
    enc = [n for n in groups if n.startswith("encoder.weight:f")]
    dec = [n for n in groups if n.startswith("decoder.weight:f")]
    assert len(enc) == 3 and len(dec) == (0 if tie else 3)  # tied: the softmax shares the embedding's
    assert [groups[n].rows for n in enc] == zipf_bucket_rows(60, 3)
    assert sum(groups[n].numel for n in enc) == 60 * 8
    x = torch.randint(0, 60, (2, 5))
    logits, _ = net(x)
    logits.sum().backward()
    assert all(g.choice.theta.grad is not None for g in search_groups(net))


def test_bucketed_plan_applies_exactly_and_admm_projects_each_bucket():
    torch.manual_seed(0)
    space = lstm_lm_space(freq_buckets=2)
    net = prepare_search_(tiny_lm(vocab=60, dim=8), space)
    bits = {g.name: (8 if g.name.endswith(":f0") else 1) for g in search_groups(net)}
    plan = derive_plan(net, space).with_bits(bits)
    fixed = apply_plan_(tiny_lm(vocab=60, dim=8), plan, space).eval()
    w = fixed.encoder.composite_weight("weight").detach()
    lo, hi = plan.groups["encoder.weight:f1"].rows
    assert w[lo:hi].abs().unique().numel() == 1  # the tail bucket: one binary scale
    assert w[:lo].unique().numel() > 3  # the frequent rows keep 8 bits
    net = tiny_lm(vocab=60, dim=8)
    admm = ADMMState(net, plan)
    scales = {}
    for name in ("encoder.weight:f0", "encoder.weight:f1"):  # each bucket projected on its own rows
        g = plan.groups[name]
        codes, scales[name] = project(net.encoder.weight[g.rows[0]:g.rows[1]].detach(), g.bits)
        assert torch.equal(admm.codes(name)[0], codes) and torch.equal(admm.codes(name)[1], scales[name])
        assert on_table(admm.G(name), g.bits, scales[name])
    assert not torch.equal(*scales.values())


def test_sensitivity_scores_every_bucket():
    net = tiny_lm(vocab=60, dim=8).eval()
    plan = uniform_plan(net, lstm_lm_space(freq_buckets=2), 32)
    batches = [torch.randint(0, 60, (2, 6)) for _ in range(2)]
    kl = kl_sensitivity(net, plan.groups, [1, 8], [(b,) for b in batches], lambda m, b: m(b[0])[0])
    assert {n for n in kl if n.startswith(("encoder", "decoder"))} == {
        "encoder.weight:f0", "encoder.weight:f1", "decoder.weight:f0", "decoder.weight:f1"}
    assert all(v >= 0 for g in kl.values() for v in g.values())
    assert sum(g[1] for g in kl.values()) > sum(g[8] for g in kl.values())

    def loss(model, batch):
        return F.cross_entropy(model(batch[:, :-1])[0].reshape(-1, 60), batch[:, 1:].reshape(-1))

    est = hutchinson_traces(net, loss, batches, plan.groups, max_samples=4, min_samples=2)
    omega = hawq_omega(net, plan.groups, est.traces, [1, 8])
    assert set(omega) == set(plan.groups)


def test_transformer_buckets_and_tied_layers_must_agree():
    net = TransformerLM(40, d_model=8, num_heads=2, num_layers=1, max_len=8, dropout=0.0, tie_weights=True)
    prepare_search_(net, transformer_lm_space(freq_buckets=2))
    assert {g.name for g in search_groups(net) if g.name.startswith(("encoder", "decoder"))} == {"encoder.weight:f0",
                                                                                             "encoder.weight:f1"}
    from nas_mpq.search import GroupRule, SearchSpace
    odd = SearchSpace("transformer_lm", [1, 2], rules=[GroupRule("encoder", grouping="freq_buckets", blocks=2)])
    with pytest.raises(ValueError, match="shares its weight with a layer grouped differently"):
        prepare_search_(TransformerLM(40, d_model=8, num_heads=2, num_layers=1, max_len=8, tie_weights=True), odd)
    with pytest.raises(ValueError, match="grouping 'freq_buckets' .* does not apply to the lstm 'rnn'"):
        prepare_search_(tiny_lm(), SearchSpace("lstm_lm", [1, 2], rules=[GroupRule("rnn", grouping="freq_buckets",
                                                                                    blocks=2)]))
    budget_plan = derive_plan(net, transformer_lm_space(freq_buckets=2), Budget("avg_bits", 2.0))
    # one group per bucket, shared by the tied layers: the decoder has none of its own
    assert {n for n in budget_plan.groups if n.startswith(("encoder", "decoder"))} == {"encoder.weight:f0",
                                                                                   "encoder.weight:f1"}
    assert {g.param for g in budget_plan.groups.values() if g.param.startswith(("encoder", "decoder"))} == {
        "encoder.weight"}
    numel = {n: g.numel for n, g in budget_plan.groups.items()}
    assert sum(numel[n] * b for n, b in budget_plan.bits.items()) <= 2.0 * sum(numel.values())

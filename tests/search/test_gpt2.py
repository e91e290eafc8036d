"""A Hugging Face GPT-2 (tiny, randomly initialised, nothing downloaded): its Conv1D projections,
embeddings and tied softmax layer are searched with full coverage, the plan is finalized (ADMM)
and exported, and the packed model loads into a freshly built GPT-2."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nas_mpq.admm import ADMMState
from nas_mpq.export import load_quantized, save_quantized
from nas_mpq.plan import Budget, PrecisionPlan
from nas_mpq.search import (BudgetRegularizer, SearchConv1D, SearchSpace, apply_plan_, derive_plan,
                            prepare_search_, search_groups, to_float_)

transformers = pytest.importorskip("transformers")

VOCAB = 50


class TinyGPT2(nn.Module):
    """GPT-2 with one block, 16 dimensions, 2 heads: tokens (B, T) -> logits (B, T, V)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=32,
                                         bos_token_id=0, eos_token_id=0)
        self.gpt = transformers.GPT2LMHeadModel(config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.gpt(tokens).logits


def batch(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(seed))


def task_loss(net: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = net(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def test_search_finalize_and_export_a_gpt2(tmp_path):
    space = SearchSpace("gpt2", candidates=[2, 4, 8, 32], full_coverage=True)
    net = prepare_search_(TinyGPT2(), space)
    block = "gpt.transformer.h.0"
    assert [g.name for g in search_groups(net)] == [
        "gpt.transformer.wte.weight", "gpt.transformer.wpe.weight", f"{block}.attn.c_attn.weight",
        f"{block}.attn.c_proj.weight", f"{block}.mlp.c_fc.weight", f"{block}.mlp.c_proj.weight"]
    assert isinstance(net.gpt.transformer.h[0].attn.c_attn, SearchConv1D)
    assert net.gpt.lm_head.choice("weight") is net.gpt.transformer.wte.choice("weight")  # tied: one group

    # a few supernet steps: weights on one batch, the choices on another, under an avg-bits budget
    budget = Budget("avg_bits", 4.0)
    reg = BudgetRegularizer(net, budget)
    reg.init_prior_()
    thetas = [g.choice.theta for g in search_groups(net)]
    weights = [p for p in net.parameters() if all(p is not t for t in thetas)]
    w_opt, a_opt = torch.optim.Adam(weights, lr=1e-3), torch.optim.Adam(thetas, lr=1e-2)
    net.train()
    for step in range(3):
        a_opt.zero_grad()
        (task_loss(net, batch(100 + step)) + reg.penalty(1.0)).backward()
        a_opt.step()
        w_opt.zero_grad()
        task_loss(net, batch(step)).backward()
        w_opt.step()
        assert all(t.grad is not None for t in thetas)
    plan = derive_plan(net, space, budget)
    assert set(plan.groups) == {g.name for g in search_groups(net)}
    coverage = plan.extra["coverage"]
    assert all(u["kind"] == "float" for u in coverage["unsearched"].values())  # biases and norms only
    plan = PrecisionPlan.load(plan.save(tmp_path / "plan.json"))

    # finalize: ADMM onto the plan's tables, then every weight on its table (W := G)
    to_float_(net)
    admm = ADMMState(net, plan, rho=1e-2)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    for step in range(3):
        opt.zero_grad()
        (task_loss(net, batch(step)) + admm.penalty()).backward()
        opt.step()
        admm.iterate()
    admm.finish_()
    codes = {n: admm.codes(n) if n in admm.groups else (g.view(net.get_parameter(g.param)).detach(), torch.ones(()))
             for n, g in plan.groups.items()}

    # export, and load into a GPT-2 built afresh (transformers is not a package model files may name)
    path = save_quantized(tmp_path / "gpt2.safetensors", net, plan, codes)
    loaded = load_quantized(path, TinyGPT2(seed=1))
    x = batch(7)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net.eval()(x), atol=1e-5)
    with pytest.raises(ValueError, match="network's class path 'test_gpt2.TinyGPT2' is not allowed"):
        load_quantized(path)

    # the plan alone makes the QAT model of the same groups
    qat = apply_plan_(TinyGPT2(), plan)
    assert {g.name: g.plan.bits for g in search_groups(qat)} == plan.bits

"""Every registered search space, with its default space and its richer example variant: forward,
gradients for every parameter, one-hot choices equal to the fixed-plan model, plan and export
round trips."""
import copy
import dataclasses

import pytest
import torch

from nas_mpq.export import load_quantized, save_quantized
from nas_mpq.plan import PrecisionPlan
from nas_mpq.search import (SearchSpace, activation_groups, apply_plan_, calibrate_activations_, check_plan_matches,
                            derive_plan, prepare_search_, search_groups, to_float_)
from search_spaces import build_space, get_search_space, list_search_spaces

CASES = [pytest.param(name, variant, id=f"{name}-{variant}")
         for name in list_search_spaces() for variant in ("default", "example")]


def build(name: str, variant: str, seed: int = 0):
    entry = get_search_space(name)
    torch.manual_seed(seed)
    net = entry.build(**entry.example_args)
    return entry, net, entry.space(**(entry.example_space if variant == "example" else {}))


def output(net, x) -> torch.Tensor:
    out = net(*x)
    return out[0] if isinstance(out, tuple) else out


def test_registry_holds_the_three_families():
    assert {"lstm_lm", "transformer_lm", "cnn"} <= set(list_search_spaces())


@pytest.mark.parametrize("name,variant", CASES)
def test_forward_and_every_parameter_gets_a_gradient(name, variant):
    entry, net, space = build(name, variant)
    x = net.example_input(3)
    ref = output(net, x)
    assert torch.isfinite(ref).all()
    prepare_search_(net, space).train()
    out = output(net, x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert sum(1 for g in search_groups(net) if g.choice.theta is not None) == len(search_groups(net))


@pytest.mark.parametrize("name,variant", CASES)
def test_one_hot_choice_equals_the_fixed_plan_model_exactly(name, variant):
    """Each group's theta set one-hot on a random candidate (the argmax, no noise in eval): the
    supernet's output equals that of the model with the plan applied, to the last bit."""
    entry, net, space = build(name, variant)
    fixed = copy.deepcopy(net)
    prepare_search_(net, space)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for grp in [*search_groups(net), *activation_groups(net)]:
            k = int(torch.randint(len(grp.choice.candidates), (1,), generator=g))
            grp.choice.theta.copy_(torch.nn.functional.one_hot(torch.tensor(k), len(grp.choice.candidates)).float())
    plan = derive_plan(net, space)
    apply_plan_(fixed, plan, space)
    for model in (net, fixed):  # activation quantizers start from the same batch
        calibrate_activations_(model, net.example_input(2))
    x = net.example_input(2)
    assert torch.equal(output(net.eval(), x), output(fixed.eval(), x))


@pytest.mark.parametrize("name,variant", CASES)
def test_plan_and_packed_model_round_trip(name, variant, tmp_path):
    entry, net, space = build(name, variant)
    prepare_search_(net, space)
    plan = derive_plan(net, space)
    back = PrecisionPlan.load(plan.save(tmp_path / "plan.json"))
    def layout(p: PrecisionPlan) -> dict:  # everything but the probabilities, which are rounded in files
        return {n: dataclasses.replace(g, probs=None) for n, g in p.groups.items()}

    assert layout(back) == layout(plan) and back.size() == plan.size()
    qat = apply_plan_(to_float_(net), back, space)
    check_plan_matches(qat, back, space)
    calibrate_activations_(qat, qat.example_input(2))
    path = save_quantized(tmp_path / "model.safetensors", qat, back, model_args=entry.example_args)
    loaded = load_quantized(path)
    x = qat.example_input(2)
    assert torch.allclose(output(loaded, x), output(qat.eval(), x), atol=1e-5)
    into = load_quantized(path, entry.build(**entry.example_args))  # a network built by the caller
    assert torch.equal(output(into, x), output(loaded, x))


@pytest.mark.parametrize("name", list_search_spaces())
@pytest.mark.parametrize("key, value, message", [
    ("candidates", [], r"candidates \[\] is empty; give at least one bit-width"),
    ("candidates", [2, 2], r"candidates must be distinct bit-widths, got \[2, 2\]"),
    ("activation_candidates", [], r"activation_candidates \[\] is empty"),
])
def test_empty_or_repeated_candidates_are_refused_not_replaced_by_the_defaults(name, key, value, message):
    with pytest.raises(ValueError, match=message):
        get_search_space(name).space(**{key: value})


GROUPINGS = {"lstm_lm": ["gate", "tensor"], "transformer_lm": ["tensor", "head"], "cnn": ["tensor", "block"]}


def test_every_registered_space_says_which_groupings_it_takes():
    assert sorted(GROUPINGS) == list_search_spaces()


@pytest.mark.parametrize("name, bad", [(name, bad) for name, valid in GROUPINGS.items()
                                       for bad in ("nope", "gate", "head", "block") if bad not in valid])
def test_a_grouping_the_space_does_not_take_names_the_ones_it_does(name, bad):
    message = f"unknown grouping '{bad}' for {name}; valid: {GROUPINGS[name]}"
    with pytest.raises(ValueError) as e:
        get_search_space(name).space(grouping=bad)
    assert str(e.value) == message
    with pytest.raises(ValueError) as e:
        build_space(name, grouping=bad)
    assert str(e.value) == message


@pytest.mark.parametrize("name", [*list_search_spaces(), "gpt2"])
def test_the_old_option_name_granularity_is_refused_naming_grouping(name):
    with pytest.raises(ValueError) as e:
        build_space(name, rules=[], granularity="tensor")
    assert str(e.value) == f"search space '{name}' has no key 'granularity'; it was renamed to 'grouping'"


def test_a_rule_with_the_old_key_granularity_is_refused_naming_grouping():
    rule = {"pattern": "*.attn.q", "granularity": "head", "blocks": 2}
    for make in (lambda: build_space("transformer_lm", rules=[rule]), lambda: build_space("gpt2", rules=[rule]),
                 lambda: SearchSpace("gpt2", rules=[rule])):
        with pytest.raises(ValueError) as e:
            make()
        assert str(e.value) == "a rule has no key 'granularity'; it was renamed to 'grouping'"

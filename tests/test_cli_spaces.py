"""`nas-mpq run` and `nas-mpq evaluate` end to end on the Transformer LM (per-head groups with
pruning) and the digits CNN (output-channel blocks, per-channel scales, searched activation
bit-widths, a BitOps budget), tiny limits, ADMM finalize: every exported weight on its table,
evaluate reproduces the finalize stage."""
import json

import pytest
import yaml

from conftest import check_exported_model
from nas_mpq.cli import main
from nas_mpq.plan import Budget, PrecisionPlan
from nas_mpq.search import prepare_search_, search_groups
from search_spaces.cnn import ResNetCNN, cnn_space

TRAINER = {"max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 2, "limit_test_batches": 2,
           "enable_progress_bar": False, "enable_model_summary": False}


def pipeline(net: dict, space: dict, budget: dict, data: dict) -> dict:
    admm = {"method": "admm", "rho": 0.01, "rho_growth": 1.5, "admm_every": 2}
    return {"seed_everything": 0, "data": data,
            "pretrain": {"trainer": TRAINER, "model": {"net": net}},
            "search": {"trainer": TRAINER, "model": {"net": net, "space": space, "budget": budget,
                                                     "warmup_fraction": 0.1, "ramp_fraction": 0.2}},
            "finalize": {"trainer": TRAINER, "model": {"net": net, "space": space, **admm}}}


def run_and_evaluate(cfg: dict, tmp_path, capsys) -> tuple[dict, dict]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["run", "--config", str(path), "--run_dir", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    model = run / "finalize" / "model.safetensors"
    plan, result = check_exported_model(model, capsys, report["mixed"]["test_ppl"])
    assert plan.meets_budget()
    return report, result


@pytest.mark.slow
def test_transformer_lm_per_head_search_with_pruning(corpus_dir, tmp_path, capsys):
    net = {"class_path": "search_spaces.transformer_lm.TransformerLM",
           "init_args": {"d_model": 16, "num_heads": 2, "num_layers": 1, "max_len": 16, "dropout": 0.1}}
    space = {"name": "transformer_lm", "grouping": "head", "blocks": 2, "prune": True}
    data = {"corpus": str(corpus_dir), "max_vocab": 200, "batch_size": 8, "eval_batch_size": 4, "bptt": 12}
    report, _ = run_and_evaluate(pipeline(net, space, {"kind": "avg_bits", "value": 2.0}, data), tmp_path, capsys)
    assert report["mixed"]["avg_bits"] <= 2.0
    plan = json.loads((tmp_path / "run" / "search" / "plan.json").read_text())
    assert plan["format"] == "nas-mpq.plan/4" and plan["groups"]["blocks.0.attn.o.weight:h1"]["axis"] == 1


@pytest.mark.slow
def test_digits_cnn_weight_and_activation_search_under_a_bitops_budget(tmp_path, capsys):
    args = {"num_classes": 10, "width": 4, "image_size": 8}
    space = {"name": "cnn", "grouping": "block", "blocks": 2, "prune": True, "per_channel": True,
             "activation_candidates": [4, 8, 32]}
    probe = prepare_search_(ResNetCNN(**args), cnn_space(candidates=[32], grouping="block", blocks=2))
    fp32_bitops = Budget("bitops", 1.0).measure([g.plan for g in search_groups(probe)], 0)
    budget = {"kind": "bitops", "value": fp32_bitops / 40}  # e.g. 3.2 weight bits at 8-bit inputs
    net = {"class_path": "search_spaces.cnn.ResNetCNN", "init_args": args}
    data = {"class_path": "nas_mpq.data.DigitsDataModule", "init_args": {"batch_size": 32, "eval_batch_size": 64}}
    report, result = run_and_evaluate(pipeline(net, space, budget, data), tmp_path, capsys)
    assert 0.0 <= result["test_acc"] <= 1.0
    assert result["test_acc"] == pytest.approx(report["mixed"]["test_acc"], abs=1e-9)
    assert "test acc" in (tmp_path / "run" / "report.md").read_text()
    plan = PrecisionPlan.load(tmp_path / "run" / "search" / "plan.json")
    assert len(plan.activations) == 10 and set(plan.activation_bits.values()) <= {4, 8, 32}
    ops = Budget("bitops", 1.0).measure(plan.groups.values(), 0, plan.activation_bits)
    assert ops <= budget["value"]

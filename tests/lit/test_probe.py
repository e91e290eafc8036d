"""plan_from='probe': the search compares its start plan and its best-validated plans at equal
training (probe.py) and returns the best."""
import pytest
import pytorch_lightning as pl
import torch

from conftest import tiny_lm
from nas_mpq.data import LMDataModule
from nas_mpq.lit import SupernetModule
from nas_mpq.lit.probe import probe_candidates, probe_plan, trainer_settings
from nas_mpq.plan import Budget
from nas_mpq.search import derive_plan, search_groups
from search_spaces.lstm_lm import LSTMLM


def datamodule(corpus_dir):
    return LMDataModule(str(corpus_dir), max_vocab=200, batch_size=8, eval_batch_size=4, bptt=12)


def quiet(**kw):
    return {**dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0), **kw}


def net():
    return LSTMLM(200, embed_dim=16, hidden_dim=16, num_layers=2, dropout=0.3)


def probing_search(**kw):
    pl.seed_everything(0)
    return SupernetModule(net(), budget=Budget("avg_bits", 2.0), warmup_fraction=0.1, weights_at="plan",
                          min_fill=0.99, plan_from="probe", probe_steps=3, probe_top=2, **kw)


def test_the_search_returns_the_best_probed_of_its_start_and_best_validated_plans(corpus_dir):
    module = probing_search()
    start = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=6, limit_val_batches=3, **quiet())
    trainer.fit(module, datamodule=datamodule(corpus_dir))
    assert [c["epoch"] for c in module.plan_probe.validated] == [0, 1, 2]
    assert [c["val_ppl"] for c in module.plan_probe.validated] == module.val_history
    plan = module.derive_plan()
    probes = module.plan_probe.results
    # the start plan and the two best-validated distinct plans, in that order
    assert probes[0]["epoch"] is None and probes[0]["plan"] == module.plan_probe.start_plan.to_dict()
    ranked = sorted(module.plan_probe.validated, key=lambda c: c["val_ppl"])
    bits = [type(module.plan_probe.start_plan).from_dict(c["plan"]).bits for c in [probes[0], *ranked]]
    distinct = [c for i, c in enumerate(ranked) if bits[i + 1] not in bits[:i + 1]]
    assert [c["epoch"] for c in probes[1:]] == [c["epoch"] for c in distinct[:2]]
    best = min(probes, key=lambda c: c["probe_val_ppl"])
    assert plan.to_dict()["groups"] == best["plan"]["groups"] and plan.meets_budget()
    assert plan.extra["search_epoch"] == {k: best[k] for k in ("epoch", "val_ppl", "probe_val_ppl")}
    assert module.derive_plan().bits == plan.bits and module.plan_probe.results is probes  # probed once
    # the trainer's device, which accelerator "auto" makes the first GPU where there is one
    on = {"accelerator": "gpu", "devices": [0]} if torch.cuda.is_available() else {"accelerator": "cpu", "devices": 1}
    assert trainer_settings(trainer) == {**on, "precision": "32-true", "limit_val_batches": 3,
                                         "enable_progress_bar": False}
    # each probe started from the search's starting weights, not its trained ones: the same
    # training of a fresh copy gives the same figure
    trained = {k: v.clone() for k, v in module.net.state_dict().items()}
    assert any(not torch.equal(trained[k], start[k]) for k in start)
    for c in probes:
        again = probe_plan(net(), {k: v for k, v in start.items() if ".choices." not in k},
                           type(plan).from_dict(c["plan"]), module.trainer.datamodule,
                           module.weight_factory, 3, module.hparams.grad_clip, module.seed, enable_progress_bar=False,
                           limit_val_batches=3)
        assert again == pytest.approx(c["probe_val_ppl"], rel=1e-6)
    assert all(torch.equal(module.net.state_dict()[k], v) for k, v in trained.items())  # left as it was


def test_the_start_plan_competes_and_distinct_plans_are_probed_once():
    module = probing_search()
    groups = search_groups(module.net)

    def plan_at(bits):
        with torch.no_grad():
            for g in groups:
                g.choice.theta.copy_(torch.tensor([5.0 if b == bits else 0.0 for b in g.choice.candidates]))
        return derive_plan(module.net, module.search_space, module.budget).to_dict()

    two, one = plan_at(2), plan_at(1)
    module.plan_probe.validated = [{"epoch": 0, "val_ppl": 120.0, "plan": one}, {"epoch": 1, "val_ppl": 110.0, "plan": two},
                              {"epoch": 2, "val_ppl": 115.0, "plan": two}, {"epoch": 3, "val_ppl": 130.0, "plan": one}]
    candidates = probe_candidates(module.plan_probe.start_plan, module.plan_probe.validated, module.hparams.probe_top)
    assert [c["epoch"] for c in candidates] == [None, 1, 0]  # epoch 2 and 3 repeat plans already in
    module.plan_probe.results = [{**c, "probe_val_ppl": v} for c, v in zip(candidates, (100.0, 101.0, 99.0))]
    assert module.derive_plan().extra["search_epoch"] == {"epoch": 0, "val_ppl": 120.0, "probe_val_ppl": 99.0}
    module.plan_probe.results[0]["probe_val_ppl"] = 98.0  # the start plan wins: the search returns it
    assert module.derive_plan().bits == module.plan_probe.start_plan.bits


def test_a_post_training_search_probes_its_plans_with_the_weights_trainable(corpus_dir):
    """train_weights=False freezes the search's weights; each probe still trains its copy."""
    pl.seed_everything(0)
    module = SupernetModule(net(), budget=Budget("avg_bits", 2.0), warmup_fraction=0.0, train_weights=False,
                            min_fill=0.99, plan_from="probe", probe_steps=3, probe_top=1,
                            optimizer=lambda params: torch.optim.SGD(params, lr=1.0))
    pl.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=3, **quiet()).fit(
        module, datamodule=datamodule(corpus_dir))
    plan = module.derive_plan()
    start = {k: v for k, v in module.plan_probe.start_weights.items() if ".choices." not in k}
    untrained = probe_plan(net(), start, plan, module.trainer.datamodule,
                           module.weight_factory, 0, None, 0, enable_progress_bar=False, limit_val_batches=3)
    assert plan.extra["search_epoch"]["probe_val_ppl"] != pytest.approx(untrained, rel=1e-6)  # the probe trained
    assert all(not p.requires_grad for n, p in module.net.named_parameters() if ".choices." not in n)


def test_probing_needs_a_fit_and_its_settings_are_checked():
    with pytest.raises(RuntimeError, match="run trainer.fit first"):
        probing_search().derive_plan()
    for kw, message in ((dict(probe_steps=-1), r"probe_steps must be an integer >= 0, got -1"),
                        (dict(probe_top=0), r"probe_top must be an integer >= 1, got 0"),
                        (dict(probe_top=1.5), r"probe_top must be an integer >= 1, got 1.5")):
        with pytest.raises(ValueError, match=message):
            SupernetModule(tiny_lm(), plan_from="probe", **kw)


def test_a_resumed_search_probes_from_the_weights_it_started_from(corpus_dir, tmp_path):
    module = probing_search()
    start = {k: v.clone() for k, v in module.net.state_dict().items()}
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    pl.Trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=3, callbacks=[checkpoint],
               **quiet(enable_checkpointing=True)).fit(module, datamodule=datamodule(corpus_dir))
    resumed = probing_search()
    pl.Trainer(max_epochs=2, limit_train_batches=6, limit_val_batches=3, **quiet()).fit(
        resumed, datamodule=datamodule(corpus_dir), ckpt_path=str(tmp_path / "last.ckpt"))
    assert [c["epoch"] for c in resumed.plan_probe.validated] == [0, 1]  # the first epoch's from the checkpoint
    assert all(torch.equal(resumed.plan_probe.start_weights[k], v) for k, v in start.items())

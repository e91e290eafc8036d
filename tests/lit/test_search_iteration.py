"""What one iteration of the supernet search costs: no tensor read back to the host per weight
group, `arch_every` (the choices' step on every k-th training batch only), `refit_every` (the
quantizer scales fitted on every k-th batch only) and `fuse_candidates` (a group's candidates in
one compiled pass)."""
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import host_reads, tiny_lm
from nas_mpq.data import LMDataModule
from nas_mpq.lit import SpaceConfig, SupernetModule
from nas_mpq.plan import Budget
from nas_mpq.quant import functional, fused
from nas_mpq.search import choice, sampler


class Iterations(pl.Callback):
    """After each training batch: (its index in the search, arch steps so far, search batches
    drawn so far, the multiplier mu)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, float]] = []
        self.arch_steps = self.search_batches = 0

    def on_fit_start(self, trainer: pl.Trainer, module: SupernetModule) -> None:
        draw = module._search_batch

        def counted() -> tuple:
            self.search_batches += 1
            return draw()
        module._search_batch = counted
        trainer.optimizers[1].register_step_post_hook(self._count_arch_step)

    def _count_arch_step(self, *_) -> None:
        self.arch_steps += 1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.rows.append((module.training_batch_index(batch_idx), self.arch_steps, self.search_batches,
                          float(module.dual)))


def search(corpus_dir, guard=None, **kw):
    pl.seed_everything(0)
    module = SupernetModule(tiny_lm(vocab=200, dim=16), budget=Budget("avg_bits", 2.0), warmup_fraction=0.1,
                            seed=0, **kw)
    if guard is not None:
        step = module.training_step

        def guarded(batch, batch_idx):
            with guard():
                return step(batch, batch_idx)
        module.training_step = guarded
    record = Iterations()
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=6, limit_val_batches=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[record])
    trainer.fit(module, datamodule=LMDataModule(str(corpus_dir), max_vocab=200, batch_size=8, eval_batch_size=4,
                                                bptt=12))
    return module, record.rows


def test_a_search_step_reads_nothing_back_with_soft_samples(corpus_dir):
    """Every training step of a search with soft samples (weights and layer inputs searched,
    the multiplier, the entropy term, the logged figures) runs with host reads failing."""
    search(corpus_dir, guard=lambda: host_reads(fail=True), hard_below=None,
           space=SpaceConfig(activation_candidates=[4, 8, 32]))


def test_hard_samples_read_the_picks_once_per_forward(corpus_dir):
    reads: list[str] = []
    module, rows = search(corpus_dir, guard=lambda: host_reads(fail=False, calls=reads), hard_below=0.9)
    assert module.sampler.hard
    forwards = len(rows) + rows[-1][2]  # one per training batch and per search batch
    # on an accelerator the logits come to the host in one copy (the reads of a device tensor),
    # then the picks are read there; on the CPU every read is of a host tensor
    device_reads = [r for r in reads if not r.endswith("(cpu)")] or reads
    assert 0 < len(device_reads) <= forwards
    where = (str(Path(choice.__file__)), str(Path(sampler.__file__)))  # the picks of a draw, of the argmax
    assert all(r.startswith(("tolist at ", "cpu at ")) and r.split(" at ")[1].startswith(where) for r in reads), reads


def test_arch_every_steps_the_choices_on_every_kth_batch_only(corpus_dir):
    by_default, rows_1 = search(corpus_dir)
    assert by_default.hparams.arch_every == 1
    active = [i for i, *_ in rows_1 if i / 12 >= 0.1]
    assert rows_1[-1][1] == rows_1[-1][2] == len(active) == 10  # an arch step and a search batch each

    second, rows_2 = search(corpus_dir, arch_every=2)
    stepped = [i for (i, steps, _, _), (_, before, _, _) in zip(rows_2, [(0, 0, 0, 0)] + rows_2) if steps > before]
    assert stepped == [i for i in active if i % 2 == 0]
    assert rows_2[-1][1] == rows_2[-1][2] == len(active) // 2  # half the arch steps, half the search batches
    # the multiplier moves once per arch step (so arch_every does not scale its step size)
    duals = [mu for *_, mu in rows_2]
    assert all((duals[i] != duals[i - 1]) == (i in stepped) for i in active[1:])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_arch_every_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=rf"arch_every must be a positive integer .* got {bad!r}"):
        SupernetModule(tiny_lm(), arch_every=bad)
    with pytest.raises(ValueError, match="arch_every=2 needs the bi-level search"):
        SupernetModule(tiny_lm(), arch_every=2, single_level=True)


class Fits(pl.Callback):
    """The training batches (index in the search) during which quantizer scales were fitted (a
    weight's WeightStats made, or a width fitted), and the validations (by epoch) that fitted some."""

    def __init__(self, monkeypatch) -> None:
        self.fitted: set[int] = set()
        self.validations: set[int] = set()
        self.current: int | tuple[str, int] | None = None
        for owner, name in ((functional.WeightStats, "__init__"), (functional, "_fit")):
            monkeypatch.setattr(owner, name, self._counted(getattr(owner, name)))

    def _counted(self, fit):
        def counted(*args, **kwargs):
            if isinstance(self.current, int):
                self.fitted.add(self.current)
            elif self.current is not None:
                self.validations.add(self.current[1])
            return fit(*args, **kwargs)
        return counted

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.current = module.training_batch_index(batch_idx)

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        self.current = ("val", trainer.current_epoch)

    def on_train_batch_end(self, *args) -> None:
        self.current = None

    def on_validation_batch_end(self, *args) -> None:
        self.current = None


@pytest.mark.parametrize("refit_every, settings", [
    (1, {}),
    (3, {}),
    (3, {"hard_below": 10.0}),  # hard samples of changing widths: every width fitted at the refit
    # soft blocks for the choices, the pinned plan's groups for the weights, both kept; a fused step
    # leaves the version counters as they were, so validation fits afresh only if the held are dropped
    (3, {"weights_at": "plan", "optimizer": lambda p: torch.optim.Adam(p, lr=2e-3, fused=True)}),
])
def test_refit_every_fits_the_scales_on_every_kth_batch_of_an_epoch(corpus_dir, monkeypatch, refit_every, settings):
    fits = Fits(monkeypatch)
    module = SupernetModule(tiny_lm(vocab=200, dim=16), budget=Budget("avg_bits", 2.0), warmup_fraction=0.0,
                            refit_every=refit_every, **{"hard_below": None, **settings}, seed=0)
    pl.seed_everything(0)
    pl.Trainer(max_epochs=2, limit_train_batches=7, limit_val_batches=2, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
               callbacks=[fits]).fit(module, datamodule=LMDataModule(str(corpus_dir), max_vocab=200, batch_size=8,
                                                                     eval_batch_size=4, bptt=12))
    expected = [e * 7 + i for e in range(2) for i in range(7) if i % refit_every == 0]
    assert sorted(fits.fitted) == expected  # 0, 3, 6, then from the second epoch's start 7, 10, 13
    assert fits.validations == {0, 1}  # every validation fits on the weights as they are
    assert not any(c.hold_stats for c in module._choices())


@pytest.mark.parametrize("bad", [0, -2, 2.0, True])
def test_refit_every_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=rf"refit_every must be a positive integer .* got {bad!r}"):
        SupernetModule(tiny_lm(), refit_every=bad)


def _searched_theta(corpus_dir: Path, fuse: bool) -> tuple[SupernetModule, torch.Tensor]:
    module = SupernetModule(tiny_lm(vocab=200, dim=16), budget=Budget("avg_bits", 2.0), warmup_fraction=0.0,
                            hard_below=None, fuse_candidates=fuse, seed=0)
    pl.seed_everything(0)
    pl.Trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(
        module, datamodule=LMDataModule(str(corpus_dir), max_vocab=200, batch_size=8, eval_batch_size=4, bptt=12))
    return module, torch.cat([c.theta.detach() for c in module._choices() if c.theta is not None])


def test_fuse_candidates_searches_as_the_unfused_search(corpus_dir, uncompiled_fusion):
    """fuse_candidates=True: every choice fuses, and a short search moves theta as the unfused
    one does, to float rounding (the one-pass functions run uncompiled here; test_fused.py and the
    slow test below compile them)."""
    _, theta = _searched_theta(corpus_dir, fuse=False)
    module, theta_fused = _searched_theta(corpus_dir, fuse=True)
    assert all(c.fuse for c in module._choices()) and uncompiled_fusion
    torch.testing.assert_close(theta_fused, theta, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fuse_candidates_compiled_searches_as_the_unfused_search(corpus_dir):
    module, theta = _searched_theta(corpus_dir, fuse=False)
    fused_module, theta_fused = _searched_theta(corpus_dir, fuse=True)
    compiled = fused._mix_compiled.failed is None and fused._inner_compiled.failed is None
    assert compiled == fused.compiler_available()  # without a C++ compiler: the uncompiled fallback
    torch.testing.assert_close(theta_fused, theta, rtol=1e-4, atol=1e-5)
    bits = [{n: g["bits"] for n, g in m.derive_plan().to_dict()["groups"].items()} for m in (module, fused_module)]
    assert bits[0] == bits[1]

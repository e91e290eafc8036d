"""What every stage shares (nas_mpq.stages.base and parser): a pipeline config read as the
stage's section, the module's seed following seed_everything, `--trainer.logger false`, and
argument checks that build nothing."""
import pytest
import torch
import yaml
from pytorch_lightning import LightningDataModule
from pytorch_lightning.loggers import CSVLogger

from nas_mpq.stages.finalize import FinalizeCLI
from nas_mpq.stages.pretrain import PretrainCLI
from nas_mpq.stages.search import SearchCLI


def stage_args(config, tmp_path, *more):
    return ["--config", str(config), "--run_dir", str(tmp_path / "run"), *more]


@pytest.mark.parametrize("stage_cli", [PretrainCLI, SearchCLI])
def test_seed_everything_seeds_the_module(config, tmp_path, stage_cli):
    cli = stage_cli(stage_args(config, tmp_path, "--seed_everything", "7"))
    assert cli.config.seed_everything == 7 and cli.model.seed == 7
    assert stage_cli(stage_args(config, tmp_path)).model.seed == 0  # the config's seed_everything: 0


def test_the_search_draws_its_gumbel_noise_from_seed_everything(config, tmp_path):
    draws = [SearchCLI(stage_args(config, tmp_path, "--seed_everything", seed)).model.sampler.generator.initial_seed()
             for seed in ("7", "8")]
    assert draws == [7, 8]


def test_an_explicit_module_seed_and_a_random_seed_everything(config, tmp_path):
    assert SearchCLI(stage_args(config, tmp_path, "--seed_everything", "7", "--model.seed", "3")).model.seed == 3
    cli = PretrainCLI(stage_args(config, tmp_path, "--seed_everything", "true"))
    assert isinstance(cli.config.seed_everything, int) and not isinstance(cli.config.seed_everything, bool)
    assert cli.model.seed == cli.config.seed_everything  # the seed LightningCLI chose, reproducible from it


def test_logger_false_disables_logging(config, tmp_path):
    assert [type(lg) for lg in PretrainCLI(stage_args(config, tmp_path)).trainer.loggers] == [CSVLogger]
    cli = PretrainCLI(stage_args(config, tmp_path, "--trainer.logger", "false"))
    assert cli.trainer.loggers == [] and cli.trainer.logger is None
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert not (tmp_path / "run" / "logs").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()  # checkpoints need no logger


def test_a_pipeline_config_is_read_as_the_stage_section(config, tmp_path):
    override = tmp_path / "more.yaml"
    override.write_text(yaml.safe_dump({"model": {"lam": 2.5}, "data": {"batch_size": 4}}))
    cli = SearchCLI(["--config", str(config), "--config", str(override), "--run_dir", str(tmp_path / "run")])
    assert cli.config.model.lam == 2.5 and cli.config.model.warmup_fraction == 0.1  # both files, in order
    assert cli.config.data.init_args.batch_size == 4 and cli.config.data.init_args.bptt == 12  # shared data
    cfg = yaml.safe_load(config.read_text())
    del cfg["finalize"]
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=r"has no `finalize:` section; it has \['pretrain', 'search'\]"):
        FinalizeCLI(stage_args(config, tmp_path, "--plan", "plan.json"))


def test_refusal_names_what_the_parser_refuses_and_builds_nothing(config, tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise AssertionError(f"a check built a {type(self).__name__}")

    # the classes the parser reads keep their signatures; building any network, module or data fails
    monkeypatch.setattr(torch.nn.Module, "__init__", fail)
    monkeypatch.setattr(LightningDataModule, "__init__", fail)
    assert SearchCLI.refusal(stage_args(config, tmp_path, "--model.lam", "2")) is None
    assert SearchCLI.refusal(stage_args(config, tmp_path, "--model.budget.valeu", "2")) == (
        "model.budget has no key 'valeu'; valid keys: ['kind', 'value']")
    assert "lamm" in SearchCLI.refusal(stage_args(config, tmp_path, "--model.lamm", "2"))
    assert "plan" in FinalizeCLI.refusal(stage_args(config, tmp_path))  # a required argument
    assert not (tmp_path / "run").exists()


def test_a_check_leaves_the_random_state_alone(config, tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert SearchCLI.refusal(stage_args(config, tmp_path, "--seed_everything", "7")) is None
    assert torch.equal(torch.get_rng_state(), before)

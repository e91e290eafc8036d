"""Unknown keys under model.space / model.budget (and in space rules) and non-finite numbers are refused by the stages'
parser in one line naming what is valid; bad values are refused before any training."""
import pytest
import yaml

from nas_mpq.stages.finalize import run as run_finalize
from nas_mpq.stages.parser import clearer_message
from nas_mpq.stages.pretrain import run as run_pretrain
from nas_mpq.stages.search import run as run_search

SPACE_KEYS = ("['name', 'candidates', 'grouping', 'method', 'per_channel', 'blocks', 'prune', 'activation_candidates', "
              "'freq_buckets', 'rules', 'full_coverage']")


def refusal(runner, argv, capsys) -> str:
    """The message a stage refuses `argv` with (a parser error on stderr, or the exception's)."""
    try:
        runner(argv)
    except SystemExit as e:
        assert e.code not in (0, None)
        return e.code if isinstance(e.code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    except ValueError as e:
        return str(e)
    raise AssertionError(f"{argv} was accepted")


RENAMED = "has no key 'granularity'; it was renamed to 'grouping'"


@pytest.mark.parametrize("runner, extra", [(run_search, []), (run_pretrain, []), (run_finalize, ["--plan", "p.json"])],
                         ids=["search", "pretrain", "finalize"])
@pytest.mark.parametrize("key, expected", [
    ("candidatez", f"model.space has no key 'candidatez'; valid keys: {SPACE_KEYS}"),
    ("granularity", f"model.space {RENAMED}"),
], ids=["unknown", "renamed"])
def test_unknown_space_key_names_the_valid_keys_or_its_new_name(config, tmp_path, capsys, runner, extra, key, expected):
    argv = ["--config", str(config), "--run_dir", str(tmp_path / "r"), *extra, f"--model.space.{key}", "[2]",
            "--print_config"]
    assert refusal(runner, argv, capsys).endswith(expected)


def test_unknown_budget_key_on_the_command_line_and_in_a_config_file(config, tmp_path, capsys):
    expected = "model.budget has no key 'valeu'; valid keys: ['kind', 'value']"
    argv = ["--config", str(config), "--run_dir", str(tmp_path / "r"), "--print_config"]
    assert refusal(run_search, [*argv, "--model.budget.valeu", "2"], capsys).endswith(expected)
    cfg = yaml.safe_load(config.read_text())
    cfg["search"]["model"]["budget"]["valeu"] = 2
    config.write_text(yaml.safe_dump(cfg))
    assert refusal(run_search, argv, capsys).endswith(expected)


def test_unknown_key_in_a_rule_names_the_rule_keys(config, tmp_path, capsys):
    cfg = yaml.safe_load(config.read_text())
    cfg["search"]["model"]["space"] = {"rules": [{"pattern": "rnn", "groupng": "gate"}]}
    config.write_text(yaml.safe_dump(cfg))
    argv = ["--config", str(config), "--run_dir", str(tmp_path / "r"), "--print_config"]
    assert refusal(run_search, argv, capsys).endswith(
        "a rule of model.space.rules has no key 'groupng'; valid keys: "
        "['pattern', 'grouping', 'candidates', 'exclude', 'blocks', 'axis']")


@pytest.mark.parametrize("space, where", [({"name": "lstm_lm", "granularity": "tensor"}, "model.space"),
                                          ({"rules": [{"pattern": "rnn", "granularity": "tensor"}]},
                                           "a rule of model.space.rules")], ids=["space", "rule"])
def test_the_old_key_granularity_in_a_config_file_names_grouping(config, tmp_path, capsys, space, where):
    cfg = yaml.safe_load(config.read_text())
    cfg["search"]["model"]["space"] = space
    config.write_text(yaml.safe_dump(cfg))
    argv = ["--config", str(config), "--run_dir", str(tmp_path / "r"), "--print_config"]
    assert refusal(run_search, argv, capsys).endswith(f"{where} {RENAMED}")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_budget_that_is_not_finite_is_named(config, tmp_path, capsys, value):
    argv = ["--config", str(config), "--run_dir", str(tmp_path / "r"), "--model.budget.value", value, "--print_config"]
    assert refusal(run_search, argv, capsys).endswith(f"model.budget.value must be a finite number, got {value}")


@pytest.mark.parametrize("flag, value, message", [
    ("--model.space.candidates", "[]", r"candidates \[\] is empty"),
    ("--model.space.grouping", "head", r"^unknown grouping 'head' for lstm_lm; valid: \['gate', 'tensor'\]$"),
    ("--model.budget.value", "40", r"budget avg_bits=40.0 does not constrain the search: .* valid budgets lie between "
                                   r"avg_bits=1.0000 \(the smallest plan\) and avg_bits=32.0000"),
])
def test_bad_values_are_refused_before_training(config, tmp_path, capsys, flag, value, message):
    run = tmp_path / "r"
    with pytest.raises(ValueError, match=message):
        run_search(["--config", str(config), "--run_dir", str(run), flag, value])
    assert not (run / "checkpoints").exists()


def test_a_stage_without_a_budget_keeps_the_parser_message(config, tmp_path, capsys):
    argv = ["--config", str(config), "--run_dir", str(tmp_path / "r"), "--model.budget.kind", "avg_bits", "--print_config"]
    assert refusal(run_pretrain, argv, capsys).endswith("unrecognized arguments: --model.budget.kind avg_bits")


def test_other_parser_messages_are_left_alone():
    assert clearer_message("unrecognized arguments: --trainer.max_epoch 2") == "unrecognized arguments: --trainer.max_epoch 2"
    assert clearer_message("unrecognized arguments: --trainer.x 1 --model.space.blockz 2") == (
        f"model.space has no key 'blockz'; valid keys: {SPACE_KEYS}")

"""A search space of name rules from a YAML config, for a `class_path` network nobody registered:
rules in front of a registered space's own, and full coverage refused before anything trains."""
import pytest
import torch
import yaml
from torch import nn

from nas_mpq.search import GroupRule, search_groups
from nas_mpq.stages.search import SearchCLI


class GRULM(nn.Module):
    """Embedding -> GRU -> Linear: a language model with a layer nas-mpq cannot search."""

    def __init__(self, vocab_size: int, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, vocab_size)

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor | None = None):
        y, hidden = self.gru(self.embed(tokens), hidden)
        return self.out(y), hidden


def search_config(tmp_path, corpus_dir, space: dict, net: str = f"{__name__}.GRULM", args: dict | None = None) -> str:
    cfg = {"model": {"net": {"class_path": net, "init_args": args or {"dim": 8}}, "space": space,
                     "budget": {"kind": "avg_bits", "value": 4.0}},
           "data": {"corpus": str(corpus_dir), "max_vocab": 200, "batch_size": 8, "bptt": 12}}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_rules_from_yaml_for_a_network_nobody_registered(tmp_path, corpus_dir):
    space = {"name": "gru_lm", "candidates": [2, 4, 8], "full_coverage": True,
             "rules": [{"pattern": "out.weight", "candidates": [4, 8]}, {"pattern": "gru", "exclude": True}]}
    cli = SearchCLI(["--config", search_config(tmp_path, corpus_dir, space), "--run_dir", str(tmp_path / "run")])
    assert cli.model.search_space.rules == [GroupRule("out.weight", candidates=[4, 8]), GroupRule("gru", exclude=True)]
    assert {g.name: g.choice.candidates for g in search_groups(cli.model.net)} == {
        "embed.weight": [2, 4, 8], "out.weight": [4, 8]}
    coverage = cli.model.derive_plan().extra["coverage"]
    assert coverage["unsearched"]["gru.weight_hh_l0"]["kind"] == "excluded"


def test_full_coverage_from_yaml_fails_before_training(tmp_path, corpus_dir):
    space = {"name": "gru_lm", "rules": [], "full_coverage": True}
    with pytest.raises(ValueError, match=r"demands full coverage.*gru\.weight_ih_l0"):
        SearchCLI(["--config", search_config(tmp_path, corpus_dir, space), "--run_dir", str(tmp_path / "run")])


def test_rules_go_in_front_of_a_registered_space(tmp_path, corpus_dir):
    space = {"name": "lstm_lm", "rules": [{"pattern": "decoder", "exclude": True}]}
    path = search_config(tmp_path, corpus_dir, space, "search_spaces.lstm_lm.LSTMLM", {"embed_dim": 8, "hidden_dim": 8})
    cli = SearchCLI(["--config", path, "--run_dir", str(tmp_path / "run")])
    names = [g.name for g in search_groups(cli.model.net)]
    assert "decoder.weight" not in names and "rnn.weight_hh_l1:o" in names  # the space's own gate rule still holds

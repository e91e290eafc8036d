import json

import pytest
import torch

from conftest import tiny_lm
from nas_mpq.admm import on_table, project
from nas_mpq.export import data_bytes, load_quantized, read_header, save_quantized
from nas_mpq.search import uniform_plan
from search_spaces.lstm_lm import lstm_lm_space

BITS = {"encoder.weight": 8, "decoder.weight": 1, "rnn.weight_ih_l0:i": 0, "rnn.weight_hh_l0:f": 16,
        "rnn.weight_hh_l1:o": 32}


def quantized(tie=False, vocab=300, per_row=False):
    net = tiny_lm(vocab=vocab, dim=16, tie=tie)
    plan = uniform_plan(net, lstm_lm_space(per_channel=per_row), 2)
    plan = plan.with_bits({n: BITS.get(n, b) for n, b in plan.bits.items()})
    codes = {}
    with torch.no_grad():
        for name, g in plan.groups.items():
            w = net.get_parameter(g.param)
            rows = w if g.rows is None else w[g.rows[0]:g.rows[1]]
            codes[name] = project(rows, g.bits, per_row)
            rows.copy_(codes[name][0] * codes[name][1])
    args = {"vocab_size": vocab, "embed_dim": 16, "hidden_dim": 16, "num_layers": 2, "dropout": 0.0,
            "tie_weights": tie}
    return net, plan, codes, args


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_round_trip_reproduces_the_model(tmp_path, tie, per_row):
    net, plan, codes, args = quantized(tie, per_row=per_row)
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args,
                          space_args={"per_channel": per_row}, metadata={"note": "x"})
    loaded = load_quantized(path)
    x = torch.randint(0, 300, (2, 9))
    net.eval()
    assert torch.equal(loaded(x)[0], net(x)[0])
    for name, g in plan.groups.items():
        w = loaded.get_parameter(g.param)
        w = w if g.rows is None else w[g.rows[0]:g.rows[1]]
        assert on_table(w, g.bits, codes[name][1]), name
    header = read_header(path)
    assert header["plan"].bits == plan.bits and header["metadata"] == {"note": "x"}
    if tie:
        assert loaded.decoder.weight is loaded.encoder.weight


def test_file_size_matches_the_plan(tmp_path):
    net, plan, codes, args = quantized(vocab=2000)
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args)
    expected = plan.size().size_bits / 8
    assert abs(data_bytes(path) - expected) / expected < 0.02
    assert path.stat().st_size - data_bytes(path) < 20000  # the JSON header


def test_refuses_to_overwrite(tmp_path):
    net, plan, codes, args = quantized()
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_quantized(path, net, plan, codes, args)


def test_corrupt_truncated_and_unknown_files(tmp_path):
    net, plan, codes, args = quantized()
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args)
    data = path.read_bytes()
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="t.safetensors"):
        load_quantized(truncated)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x05\x00" + b"not a model" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors model file"):
        load_quantized(garbage)
    with pytest.raises(FileNotFoundError):
        load_quantized(tmp_path / "none.safetensors")
    # metadata naming a search space nobody registered
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    p = json.loads(meta["plan"])
    p["search_space"] = "vit_huge"
    save_file(tensors, str(tmp_path / "u.safetensors"), metadata={**meta, "plan": json.dumps(p)})
    with pytest.raises(ValueError, match="unknown search space 'vit_huge'"):
        load_quantized(tmp_path / "u.safetensors")


def test_plan_that_does_not_match_the_model_names_groups(tmp_path):
    net, plan, codes, args = quantized()
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args)
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "w.safetensors"),
              metadata={**meta, "model_args": json.dumps({**args, "num_layers": 1})})
    with pytest.raises(ValueError, match=r"plan groups not in the model: \[.*rnn.weight_hh_l1:f"):
        load_quantized(tmp_path / "w.safetensors")

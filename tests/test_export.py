import json
import sys

import pytest
import torch

from conftest import tiny_lm
from nas_mpq.admm import on_table, project
from nas_mpq.export import data_bytes, load_quantized, read_header, save_quantized
from nas_mpq.search import uniform_plan
from nas_mpq.stages.evaluate import run as run_evaluate
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
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args, metadata={"note": "x"})
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
    # a file of format 1 (the network of a registered search space) naming a space nobody registered
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    p = json.loads(meta["plan"])
    p["space_name"] = "vit_huge"
    save_file(tensors, str(tmp_path / "u.safetensors"), metadata={**meta, "plan": json.dumps(p)})
    as_format_1(tmp_path / "u.safetensors", tmp_path / "u.safetensors")
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


# ---- model files are data: allowed classes, checked arguments, checksums ------------------------

def as_plan_format_3(plan_json: str) -> str:
    """A plan of format 4 as format 3 wrote it: the space's name under `search_space`."""
    plan = json.loads(plan_json)
    return json.dumps({"format": "nas-mpq.plan/3", "search_space": plan.pop("space_name"),
                       **{k: v for k, v in plan.items() if k != "format"}})


def as_format_1(path, out):
    """The packed model as format 1 wrote it: no class path, the network named by its search space,
    the plan of format 3."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = {k: v for k, v in meta.items() if k != "model_class"}
    save_file(tensors, str(out), metadata={**meta, "format": "nas-mpq.model/1", "space_args": "{}",
                                           "plan": as_plan_format_3(meta["plan"])})
    return out


def rewrite(path, out, drop=(), **changes):
    """A copy of the packed model at `out` with metadata entries replaced (JSON-encoded) or dropped."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = {k: v for k, v in meta.items() if k not in drop}
    save_file(tensors, str(out), metadata={**meta, **{k: json.dumps(v) for k, v in changes.items()}})
    return out


def test_data_class_outside_the_allowed_packages_is_refused_before_import(tmp_path, monkeypatch):
    from nas_mpq.export import evaluation_data
    net, plan, codes, args = quantized()
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args,
                          metadata={"data": {"class_path": "nas_mpq.data.LMDataModule", "init_args": {"bptt": 12}}})
    assert evaluation_data(path) == {"class_path": "nas_mpq.data.LMDataModule", "init_args": {"bptt": 12}}
    # a module beside the model file that runs code when imported
    (tmp_path / "beside.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nclass Data: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for class_path in ("beside.Data", "os.system", "nas_mpq_evil.Data"):
        bad = rewrite(path, tmp_path / "bad.safetensors", metadata={"data": {"class_path": class_path}})
        with pytest.raises(ValueError, match=rf"class path '{class_path}' is not allowed: .*\['nas_mpq', 'search_spaces'\]"):
            evaluation_data(bad)
    with pytest.raises(ValueError, match=r"class path 'nas_mpq_evil.Data' is not allowed"):
        run_evaluate(["--model", str(bad)])  # `nas-mpq evaluate` checks before its parser imports anything
    assert not (tmp_path / "ran").exists() and "beside" not in sys.modules
    # a class merely imported into an allowed package, and a name that is not a class path
    for class_path, message in (("nas_mpq.stages.base.Trainer", "does not name a class defined in"),
                                ("nas_mpq.data.LMDataModule()", "not a dotted Python name")):
        bad = rewrite(path, tmp_path / "bad.safetensors", metadata={"data": {"class_path": class_path}})
        with pytest.raises(ValueError, match=message):
            evaluation_data(bad)
    # a data module nested in the arguments of an allowed one
    nested = {"class_path": "nas_mpq.data.WithSearchSplit", "init_args": {"datamodule": {"class_path": "beside.Data"}}}
    bad = rewrite(path, tmp_path / "bad.safetensors", metadata={"data": nested})
    with pytest.raises(ValueError, match=r"the data module's datamodule's class path 'beside.Data' is not allowed"):
        evaluation_data(bad)
    with pytest.raises(ValueError, match=r"class path 'beside.Data' is not allowed"):
        run_evaluate(["--model", str(bad)])
    assert not (tmp_path / "ran").exists() and "beside" not in sys.modules
    # the caller's allow-list
    bad = rewrite(path, tmp_path / "bad.safetensors", metadata={"data": {"class_path": "beside.Data"}})
    assert evaluation_data(bad, allowed=("beside",))["class_path"] == "beside.Data"


def test_data_arguments_are_checked_against_the_constructor(tmp_path):
    from pytorch_lightning import LightningDataModule

    from nas_mpq.export import evaluation_data
    net, plan, codes, args = quantized()
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args, metadata={"data": {"bptt": 12}})
    assert evaluation_data(path, base=LightningDataModule)["init_args"] == {"bptt": 12}
    bad = rewrite(path, tmp_path / "bad.safetensors", metadata={"data": {"bptt": 12, "shell": "rm -rf /"}})
    with pytest.raises(ValueError, match=r"LMDataModule takes no argument\(s\) \['shell'\]; valid: \['corpus'"):
        evaluation_data(bad)
    bad = rewrite(path, tmp_path / "bad.safetensors", metadata={"data": {"batch_size": 10**10}})
    with pytest.raises(ValueError, match=r"batch_size = 10000000000 exceeds the limit of 10,000,000"):
        evaluation_data(bad)
    bad = rewrite(path, tmp_path / "bad.safetensors", metadata={"data": {"class_path": "nas_mpq.plan.Budget"}})
    with pytest.raises(ValueError, match="is not a LightningDataModule"):
        evaluation_data(bad, base=LightningDataModule)


@pytest.mark.parametrize("model_args, message", [
    ({"vocab_size": 300, "embed_dim": 16, "hidden_dim": 16, "num_layers": 2, "dropout": 0.0, "rm": 1},
     r"LSTMLM takes no argument\(s\) \['rm'\]; valid: \['vocab_size', 'embed_dim'"),
    ({"vocab_size": 10**10, "embed_dim": 16}, r"model_args: vocab_size = 10000000000 exceeds the limit of 10,000,000"),
    ({"embed_dim": 16}, r"LSTMLM needs the argument\(s\) \['vocab_size'\]"),
    ({"vocab_size": 10**7, "embed_dim": 1000}, r"a network of [\d,]+ parameters, above the limit of 1,000,000,000"),
    ({"vocab_size": "many"}, r"model_args do not build a LSTMLM"),
])
def test_network_arguments_are_checked_before_anything_is_allocated(tmp_path, model_args, message):
    net, plan, codes, args = quantized()
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args)
    bad = rewrite(path, tmp_path / "bad.safetensors", model_args=model_args)
    with pytest.raises(ValueError, match=message):
        load_quantized(bad)


def test_network_class_outside_the_allowed_packages_is_refused(tmp_path):
    net, plan, codes, args = quantized()
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args)
    with pytest.raises(ValueError, match=r"network's class path 'search_spaces.lstm_lm.LSTMLM' is not allowed: "
                                         r".*\['nas_mpq'\]"):
        load_quantized(path, allowed=("nas_mpq",))
    for class_path in ("os.system", "torch.nn.Linear", "nas_mpq.plan.Budget"):
        bad = rewrite(path, tmp_path / "bad.safetensors", model_class=class_path)
        with pytest.raises(ValueError, match=rf"network's class path '{class_path}' (is not allowed|is not a Module)"):
            load_quantized(bad)
    # a training module of an allowed package is not a network
    bad = rewrite(path, tmp_path / "bad.safetensors", model_class="nas_mpq.lit.common.TaskModule")
    with pytest.raises(ValueError, match=r"network's class path 'nas_mpq.lit.common.TaskModule' is a LightningModule"):
        load_quantized(bad)
    # files of format 1 name their network by search space
    v1 = as_format_1(path, tmp_path / "v1.safetensors")
    with pytest.raises(ValueError, match=r"network class LSTMLM of search space 'lstm_lm' is not allowed"):
        load_quantized(v1, allowed=("nas_mpq",))
    x = torch.randint(0, 300, (2, 9))
    assert torch.equal(load_quantized(v1)(x)[0], load_quantized(path)(x)[0])


def test_a_model_file_whose_plan_is_of_format_3_loads(tmp_path):
    net, plan, codes, args = quantized(per_row=True)
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args)
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert json.loads(meta["plan"])["space_name"] == "lstm_lm"
    old = tmp_path / "v3.safetensors"
    save_file(tensors, str(old), metadata={**meta, "plan": as_plan_format_3(meta["plan"])})
    assert json.loads(safe_open(str(old), framework="pt").metadata()["plan"])["search_space"] == "lstm_lm"
    header = read_header(old)
    assert header["plan"].space_name == "lstm_lm" and header["plan"].groups == read_header(path)["plan"].groups
    x = torch.randint(0, 300, (2, 9))
    assert torch.equal(load_quantized(old)(x)[0], load_quantized(path)(x)[0])


def test_a_flipped_byte_names_the_tensor_and_the_file(tmp_path):
    net, plan, codes, args = quantized()
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args)
    assert set(read_header(path)["checksums"]) == {k for k in _tensor_offsets(path)}
    data = bytearray(path.read_bytes())
    begin, _ = _tensor_offsets(path)["decoder.weight.codes"]
    data[begin] ^= 0x01
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"flipped.safetensors: tensor 'decoder.weight.codes' does not match its SHA-256"):
        load_quantized(flipped)


def test_a_file_without_checksums_loads_with_a_warning(tmp_path):
    net, plan, codes, args = quantized()
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args)
    old = rewrite(path, tmp_path / "old.safetensors", drop=("checksums",))
    with pytest.warns(UserWarning, match="old.safetensors has no tensor checksums"):
        loaded = load_quantized(old)
    x = torch.randint(0, 300, (2, 9))
    assert torch.equal(loaded(x)[0], load_quantized(path)(x)[0])


def _tensor_offsets(path):
    """{tensor name: (first byte, end) in the file} from the safetensors header."""
    import struct
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
            for k, v in header.items() if k != "__metadata__"}


def test_evaluate_trusts_a_package_named_by_allow(tmp_path, monkeypatch, capsys):
    net, plan, codes, args = quantized()
    path = save_quantized(tmp_path / "m.safetensors", net, plan, codes, args,
                          metadata={"data": {"class_path": "nas_mpq.data.LMDataModule", "init_args": {"bptt": 12}}})
    (tmp_path / "my_models.py").write_text("from search_spaces.lstm_lm import LSTMLM\nclass Net(LSTMLM): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    own = rewrite(path, tmp_path / "own.safetensors", model_class="my_models.Net")
    with pytest.raises(ValueError, match=r"'my_models.Net' is not allowed"):
        run_evaluate(["--model", str(own)])
    assert "my_models" not in sys.modules
    evaluated = []
    monkeypatch.setattr("nas_mpq.stages.evaluate.split_metrics",
                        lambda net, data, split: evaluated.append(type(net).__name__) or {"test_ppl": 1.0})
    assert run_evaluate(["--model", str(own), "--allow", "my_models"]) == 0
    assert evaluated == ["Net"] and json.loads(capsys.readouterr().out)["test_ppl"] == 1.0
    with pytest.raises(ValueError, match=r"--allow takes a top-level package name .* got 'my_models.sub'"):
        run_evaluate(["--model", str(own), "--allow", "my_models.sub"])

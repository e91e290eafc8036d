"""Packed model files: one safetensors file with, per weight group, its integer codes bit-packed
at the planned bits (uint8) and its scale(s); every unsearched tensor in float32; and in the
metadata the plan, the search space and the network's constructor arguments.

Tensors: `<group>.codes` (uint8) + `<group>.scale` (float32) for 1-8 bits, `<group>.values`
(float16 / float32) for 16 / 32 bits, nothing for 0 bits; `param.<name>` for unsearched tensors,
among them the clipping value of every quantized layer input (`<layer>.input_choice.*`).
The data takes plan.size_bits / 8 bytes up to the rounding of each group to whole bytes.

Example:
    >>> save_quantized("model.safetensors", net, plan, codes, model_args={"vocab_size": 10000})
    >>> net = load_quantized("model.safetensors")     # float module, weights = scale x code
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .plan import GroupPlan, PrecisionPlan
from .quant.packing import pack_codes, unpack_codes
from .search import attach_input_choices_, check_plan_matches
from search_spaces import get_search_space

MODEL_FORMAT = "nas-mpq.model/1"
GroupCodes = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


def group_shape(net: nn.Module, g: GroupPlan) -> tuple[int, ...]:
    return g.shape(net.get_parameter(g.param).shape)


def _searched_tensor_ids(net: nn.Module, plan: PrecisionPlan) -> set[int]:
    return {id(net.get_parameter(g.param)) for g in plan.groups.values()}


def save_quantized(path: str | Path, net: nn.Module, plan: PrecisionPlan, codes: GroupCodes,
                   model_args: Mapping[str, Any], space_args: Mapping[str, Any] | None = None,
                   metadata: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write the packed model. `net` is the float network (its unsearched tensors are stored),
    `codes` maps every group of `plan` to (integer codes, scale) at its bits."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it (pass --overwrite to replace it)")
    missing = sorted(set(plan.groups) - set(codes))
    if missing:
        raise ValueError(f"no codes for groups {missing}")
    tensors: dict[str, torch.Tensor] = {}
    for name, g in plan.groups.items():
        c, scale = (t.detach().cpu() for t in codes[name])
        if g.bits == 32:
            tensors[f"{name}.values"] = c.float().contiguous()
        elif g.bits == 16:
            tensors[f"{name}.values"] = c.half().contiguous()
        elif g.bits > 0:
            tensors[f"{name}.codes"] = pack_codes(c, g.bits)
            tensors[f"{name}.scale"] = scale.float().reshape(-1).contiguous()
    searched = _searched_tensor_ids(net, plan)
    for name, t in net.state_dict(keep_vars=True).items():
        if id(t) not in searched:
            tensors[f"param.{name}"] = t.detach().float().cpu().contiguous()
    header = {"format": MODEL_FORMAT, "plan": json.dumps(plan.to_dict()), "model_args": json.dumps(dict(model_args)),
              "space_args": json.dumps(dict(space_args or {})), "metadata": json.dumps(dict(metadata or {}))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """The metadata of a packed model: format, plan (PrecisionPlan), model_args, space_args, metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors model file ({e})") from None
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: unsupported model format {meta.get('format')!r}; expected {MODEL_FORMAT!r}")
    try:
        return {"format": meta["format"], "plan": PrecisionPlan.from_dict(json.loads(meta["plan"]), str(path)),
                **{k: json.loads(meta[k]) for k in ("model_args", "space_args", "metadata")}}
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt metadata ({e})") from None


def load_quantized(path: str | Path) -> nn.Module:
    """Rebuild the network from the search-space registry and the file: a float module (eval mode)
    whose quantized weights are exactly scale x code, with the plan's activation quantizers in
    front of their layers."""
    path = Path(path)
    header = read_header(path)
    plan: PrecisionPlan = header["plan"]
    entry = get_search_space(plan.search_space)
    net = entry.build(**header["model_args"])
    check_plan_matches(net, plan, entry.space(**header["space_args"]))
    # activation quantizers of the plan; their clipping values are among the stored tensors
    attach_input_choices_(net, {n: [a.bits] for n, a in plan.activations.items()})
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: truncated or corrupt tensor data ({e})") from None
    with torch.no_grad():
        for name, g in plan.groups.items():
            shape = group_shape(net, g)
            numel = int(torch.Size(shape).numel())
            if g.bits in (16, 32):
                w = _take(stored, f"{name}.values", path).float()
            elif g.bits == 0:
                w = torch.zeros(shape)
            else:
                codes = unpack_codes(_take(stored, f"{name}.codes", path), g.bits, numel).reshape(shape)
                scale = _take(stored, f"{name}.scale", path)
                w = codes * (scale.reshape(()) if scale.numel() == 1 else scale.reshape((-1,) + (1,) * (len(shape) - 1)))
            g.view(net.get_parameter(g.param)).copy_(w.reshape(shape))
        searched = _searched_tensor_ids(net, plan)
        own = {k: t for k, t in net.state_dict(keep_vars=True).items() if id(t) not in searched}
        rest = {k[len("param."):] for k in stored if k.startswith("param.")}
        if rest != set(own):
            raise ValueError(f"{path}: unsearched tensors do not match the model: missing "
                             f"{sorted(set(own) - rest)}, unexpected {sorted(rest - set(own))}")
        for k, t in own.items():
            t.copy_(stored[f"param.{k}"])
    return net.eval()


def _take(stored: dict[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in stored:
        raise ValueError(f"{path}: tensor {key!r} is missing; the file does not match its plan")
    return stored[key]


def data_bytes(path: str | Path) -> int:
    """Bytes of tensor data in a safetensors file (the file size less its JSON header)."""
    path = Path(path)
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    return path.stat().st_size - 8 - header_len

"""Packed model files: one safetensors file with, per weight group, its integer codes bit-packed
at the planned bits (uint8) and its scale(s); every unsearched tensor in float32; and in the
metadata the plan, the search space and the network's constructor arguments.

Tensors: `<group>.codes` (uint8) + `<group>.scale` (float32) for 1-8 bits, `<group>.values`
(float16 / float32) for 16 / 32 bits, nothing for 0 bits; `param.<name>` for unsearched tensors,
among them the clipping value of every quantized layer input (`<layer>.input_choice.*`).
The data takes plan.size_bits / 8 bytes up to the rounding of each group to whole bytes; the
metadata holds a SHA-256 of every tensor, verified on load.

A model file is data (see allowlist.py): loading it imports nothing its metadata names outside the
allowed packages, checks the network's and data module's arguments before building anything,
builds the network on the meta device first to check its size, and refuses a tensor whose
checksum differs. Files written before checksums existed load with a warning.

Example:
    >>> save_quantized("model.safetensors", net, plan, codes, model_args={"vocab_size": 10000})
    >>> net = load_quantized("model.safetensors")     # float module, weights = scale x code
"""
from __future__ import annotations

import hashlib
import json
import struct
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .allowlist import TRUSTED_PACKAGES, allowed_class, check_allowed_module, check_arguments, check_sizes
from .files import atomic_output
from .plan import GroupPlan, PrecisionPlan
from .quant.packing import pack_codes, unpack_codes
from .search import attach_input_choices_, check_plan_matches
from search_spaces import SearchSpaceEntry, get_search_space

MODEL_FORMAT = "nas-mpq.model/1"
MAX_PARAMETERS = 10**9
"""The most parameters a model file may ask for (4 GB of float32), counted on the meta device
before any memory is allocated; load_quantized(max_parameters=...) raises it."""
HEADER_KEYS = ("model_args", "space_args", "metadata")
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
              "space_args": json.dumps(dict(space_args or {})), "metadata": json.dumps(dict(metadata or {})),
              "checksums": json.dumps({k: tensor_sha256(t) for k, t in tensors.items()})}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """The metadata of a packed model: format, plan (PrecisionPlan), model_args, space_args,
    metadata (mappings) and checksums (tensor name -> SHA-256, None in files written before them)."""
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
        header = {"format": meta["format"], "plan": PrecisionPlan.from_dict(json.loads(meta["plan"]), str(path)),
                  **{k: json.loads(meta[k]) for k in HEADER_KEYS},
                  "checksums": json.loads(meta["checksums"]) if "checksums" in meta else None}
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt metadata ({e})") from None
    optional = ("checksums",) if header["checksums"] is not None else ()
    bad = [k for k in (*HEADER_KEYS, *optional) if not isinstance(header[k], dict)]
    if bad:
        raise ValueError(f"{path}: corrupt metadata ({', '.join(bad)} not a mapping)")
    return header


def evaluation_data(path: str | Path, allowed: Iterable[str] = TRUSTED_PACKAGES,
                    base: type | None = None) -> dict[str, Any]:
    """The data module the model was evaluated on, as {"class_path", "init_args"}: a class of an
    allowed package (a subclass of `base` if given) with arguments its constructor takes, checked
    before it is imported or built."""
    data = read_header(path)["metadata"].get("data", {})
    if not isinstance(data, dict):
        raise ValueError(f"{path}: corrupt metadata (data is not a mapping)")
    if "class_path" not in data:  # an LM corpus module's arguments
        data = {"class_path": "nas_mpq.data.LMDataModule", "init_args": data}
    cls = allowed_class(data["class_path"], allowed, base)
    check_arguments(cls, data.get("init_args", {}), f"{path}: the data module's init_args")
    return {"class_path": data["class_path"], "init_args": dict(data.get("init_args", {}))}


def load_quantized(path: str | Path, allowed: Iterable[str] = TRUSTED_PACKAGES,
                   max_parameters: int = MAX_PARAMETERS) -> nn.Module:
    """Rebuild the network from the search-space registry and the file: a float module (eval mode)
    whose quantized weights are exactly scale x code, with the plan's activation quantizers in
    front of their layers. The network's class must belong to a package of `allowed`; its
    arguments and size are checked before it is built, every tensor against its checksum."""
    path = Path(path)
    header = read_header(path)
    plan: PrecisionPlan = header["plan"]
    entry = get_search_space(plan.search_space)
    check_allowed_module(entry.model_cls.__module__, f"{path}: network class {entry.model_cls.__qualname__} "
                         f"of search space {plan.search_space!r}", allowed)
    check_arguments(entry.model_cls, header["model_args"], f"{path}: model_args")
    check_sizes(header["space_args"], f"{path}: space_args")
    net = _build_checked(entry, header["model_args"], path, max_parameters)
    check_plan_matches(net, plan, entry.space(**header["space_args"]))
    # activation quantizers of the plan; their clipping values are among the stored tensors
    attach_input_choices_(net, {n: [a.bits] for n, a in plan.activations.items()})
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: truncated or corrupt tensor data ({e})") from None
    verify_checksums(stored, header["checksums"], path)
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


def _build_checked(entry: SearchSpaceEntry, model_args: dict[str, Any], path: Path, max_parameters: int) -> nn.Module:
    """The network, built for real only after a build on the meta device (no memory) has shown it
    holds at most `max_parameters` parameters."""
    try:
        with torch.device("meta"):
            probe = entry.build(**model_args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: model_args do not build a {entry.model_cls.__name__}: {e}") from None
    count = sum(p.numel() for p in dict((id(p), p) for p in probe.parameters()).values())
    if count > max_parameters:
        raise ValueError(f"{path}: model_args ask for a network of {count:,} parameters, above the limit of "
                         f"{max_parameters:,} (load_quantized(max_parameters=...) raises it)")
    return entry.build(**model_args)


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes as safetensors stores them (contiguous, little-endian)."""
    return hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def verify_checksums(stored: Mapping[str, torch.Tensor], checksums: Mapping[str, str] | None, path: Path) -> None:
    """ValueError naming the tensor and the file if a tensor's SHA-256 differs from the one
    recorded at export, or if tensors and checksums do not correspond; a warning for a file
    without checksums (written before they existed), whose data cannot be verified."""
    if checksums is None:
        warnings.warn(f"{path} has no tensor checksums (it was written by an older nas-mpq); "
                      "its tensor data is loaded unverified", stacklevel=3)
        return
    unchecked, missing = sorted(set(stored) - set(checksums)), sorted(set(checksums) - set(stored))
    if unchecked or missing:
        raise ValueError(f"{path}: tensors and checksums do not correspond: tensors without a checksum "
                         f"{unchecked}, checksums without a tensor {missing}")
    for name, t in stored.items():
        if tensor_sha256(t) != checksums[name]:
            raise ValueError(f"{path}: tensor {name!r} does not match its SHA-256 checksum; "
                             "the file is corrupt or was modified after export")


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

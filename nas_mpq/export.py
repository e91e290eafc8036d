"""Packed model files: one safetensors file with, per weight group, its integer codes bit-packed
at the planned bits (uint8) and its scale(s); every unsearched tensor in float32; and in the
metadata the plan (self-contained: every group's slice, bits and quantizer settings), the
network's class path and constructor arguments.

Tensors: `<group>.codes` (uint8) + `<group>.scale` (float32) for 1-8 bits, `<group>.values`
(float16 / float32) for 16 / 32 bits, nothing for 0 bits; `param.<name>` for unsearched tensors,
among them the clipping value of every quantized layer input (`<layer>.input_choice.*`).
The data takes plan.size_bits / 8 bytes up to the rounding of each group to whole bytes; the
metadata holds a SHA-256 of every tensor, verified on load.

A model file is data (see allowlist.py): loading it without a model imports nothing its metadata
names outside the allowed packages, checks the network's and data module's arguments before
building anything, builds the network on the meta device first to check its size, and refuses a
tensor whose checksum differs. Files written before checksums existed load with a warning; files
of format 1 (no class path) rebuild the network of their registered search space.

Example:
    >>> save_quantized("model.safetensors", net, plan, model_args={"vocab_size": 10000})
    >>> net = load_quantized("model.safetensors")     # float module, weights = scale x code
    >>> load_quantized("model.safetensors", MyNet())  # a network of your own, built by you
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

from .allowlist import TRUSTED_PACKAGES, allowed_class, check_allowed_module, check_arguments, package_of
from .files import atomic_output
from .plan import GroupPlan, PrecisionPlan
from .quant.packing import pack_codes, unpack_codes
from .search import attach_input_choices_, check_plan_matches, detach_input_choices_, search_groups, to_float_
from search_spaces import get_search_space

MODEL_FORMAT = "nas-mpq.model/2"
READABLE_FORMATS = ("nas-mpq.model/1", MODEL_FORMAT)
"""Version 2 records the network's class path (`model_class`) and no longer the search space's
options (the plan carries what they decided)."""
MAX_PARAMETERS = 10**9
"""The most parameters a model file may ask for (4 GB of float32), counted on the meta device
before any memory is allocated; load_quantized(max_parameters=...) raises it."""
LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning")
"""A model file names a network: a class deriving from one of these packages' (a LightningModule,
a training module) is refused."""
GroupCodes = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


def group_shape(net: nn.Module, g: GroupPlan) -> tuple[int, ...]:
    return g.shape(net.get_parameter(g.param).shape)


def _searched_tensor_ids(net: nn.Module, plan: PrecisionPlan) -> set[int]:
    return {id(net.get_parameter(g.param)) for g in plan.groups.values()}


@torch.no_grad()
def plan_codes(model: nn.Module, plan: PrecisionPlan) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(integer codes, scale) of every group of `plan` from `model`'s weights: by the group's own
    quantizer where `model` has the plan applied (an LSQ step size included), else by a
    quantizer built from the group's bits and settings."""
    applied = {g.name: g.choice for g in search_groups(model)}
    out = {}
    for name, g in plan.groups.items():
        w = g.view(model.get_parameter(g.param)).detach()
        choice = applied.get(name)
        q = choice.quantizers[0] if choice is not None and choice.candidates == [g.bits] else g.settings.quantizer(g.bits, w)
        out[name] = q.codes(w)
    return out


def save_quantized(path: str | Path, model: nn.Module, plan: PrecisionPlan, codes: GroupCodes | None = None,
                   model_args: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
                   overwrite: bool = False) -> Path:
    """Write the packed model of `model` (float, or with the plan applied) at `plan`. `codes`
    maps every group to (integer codes, scale) at its bits (default: plan_codes, from the
    model's weights). `model_args`, the constructor arguments of the model's class, let
    load_quantized rebuild the network; without them the file loads into a model you give it."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it (pass --overwrite to replace it)")
    check_plan_matches(model, plan)
    codes = plan_codes(model, plan) if codes is None else codes
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
    for name, t in _unsearched_tensors(model, plan).items():
        tensors[f"param.{name}"] = t.detach().float().cpu().contiguous()
    cls = type(model)
    header = {"format": MODEL_FORMAT, "plan": json.dumps(plan.to_dict()),
              "model_class": json.dumps(f"{cls.__module__}.{cls.__qualname__}"),
              "model_args": json.dumps(None if model_args is None else dict(model_args)),
              "metadata": json.dumps(dict(metadata or {})),
              "checksums": json.dumps({k: tensor_sha256(t) for k, t in tensors.items()})}
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def _unsearched_tensors(model: nn.Module, plan: PrecisionPlan) -> dict[str, torch.Tensor]:
    """The state of `model` outside the plan's groups and the search machinery of its weight
    choices (layer-input quantizers are part of the model's state)."""
    searched = _searched_tensor_ids(model, plan)
    searched |= {id(t) for g in search_groups(model) for t in (*g.choice.parameters(), *g.choice.buffers())}
    return {k: t for k, t in model.state_dict(keep_vars=True).items() if id(t) not in searched}


def read_header(path: str | Path) -> dict[str, Any]:
    """The metadata of a packed model: format, plan (PrecisionPlan), model_class (None in files of
    format 1), model_args (None when not recorded), metadata (a mapping) and checksums (tensor name
    -> SHA-256, None in files written before them)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors model file ({e})") from None
    if meta.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path}: unsupported model format {meta.get('format')!r}; readable: {list(READABLE_FORMATS)}")
    try:
        header = {"format": meta["format"], "plan": PrecisionPlan.from_dict(json.loads(meta["plan"]), str(path)),
                  **{k: json.loads(meta[k]) if k in meta else None for k in ("model_class", "checksums")},
                  "model_args": json.loads(meta["model_args"]), "metadata": json.loads(meta["metadata"])}
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt metadata ({e})") from None
    kinds = {"model_class": str, "model_args": dict, "metadata": dict, "checksums": dict}
    may_be_absent = ("model_class", "model_args", "checksums")
    bad = [k for k, kind in kinds.items() if not (isinstance(header[k], kind) or (k in may_be_absent and header[k] is None))]
    if bad:
        raise ValueError(f"{path}: corrupt metadata ({', '.join(bad)} of the wrong type)")
    return header


def evaluation_data(path: str | Path, allowed: Iterable[str] = TRUSTED_PACKAGES,
                    base: type | None = None) -> dict[str, Any]:
    """The data module the model was evaluated on, as {"class_path", "init_args"}: a class of an
    allowed package (a subclass of `base` if given) with arguments its constructor takes, checked
    before it is imported or built; so is every class nested in its arguments (the data module a
    WithSearchSplit wraps)."""
    data = read_header(path)["metadata"].get("data", {})
    if not isinstance(data, dict):
        raise ValueError(f"{path}: corrupt metadata (data is not a mapping)")
    if "class_path" not in data:  # an LM corpus module's arguments
        data = {"class_path": "nas_mpq.data.LMDataModule", "init_args": data}
    _check_class_spec(data, allowed, base, f"{path}: the data module")
    return {"class_path": data["class_path"], "init_args": dict(data.get("init_args", {}))}


def _check_class_spec(spec: Mapping[str, Any], allowed: Iterable[str], base: type | None, what: str) -> None:
    """ValueError naming `what` unless `spec`'s class and every class nested in its init_args are
    allowed subclasses of `base` built with arguments their constructors take."""
    try:
        cls = allowed_class(spec["class_path"], allowed, base)
    except ValueError as e:
        raise ValueError(f"{what}'s {e}") from None
    args = spec.get("init_args", {})
    check_arguments(cls, args, f"{what}'s init_args")
    for key, value in args.items():
        for nested in _class_specs(value):
            _check_class_spec(nested, allowed, base, f"{what}'s {key}")


def _class_specs(value: Any) -> list[Mapping[str, Any]]:
    """The outermost mappings with a class_path inside `value` (at any depth of lists and mappings)."""
    if isinstance(value, Mapping):
        return [value] if "class_path" in value else [s for v in value.values() for s in _class_specs(v)]
    return [s for v in value for s in _class_specs(v)] if isinstance(value, (list, tuple)) else []


def load_quantized(path: str | Path, model: nn.Module | None = None, allowed: Iterable[str] = TRUSTED_PACKAGES,
                   max_parameters: int = MAX_PARAMETERS) -> nn.Module:
    """The packed model as a float module (eval mode) whose quantized weights are exactly
    scale x code, with the plan's activation quantizers in front of their layers. With `model`
    the weights load into it (any network that fits the plan); without, the network the file
    names is built, when its class belongs to a package of `allowed`, its arguments and size
    checked first. Every tensor is checked against its checksum."""
    path = Path(path)
    header = read_header(path)
    plan: PrecisionPlan = header["plan"]
    net = _build_network(header, path, allowed, max_parameters) if model is None else model
    detach_input_choices_(to_float_(net))
    check_plan_matches(net, plan)
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
        own = _unsearched_tensors(net, plan)
        rest = {k[len("param."):] for k in stored if k.startswith("param.")}
        if rest != set(own):
            raise ValueError(f"{path}: unsearched tensors do not match the model: missing "
                             f"{sorted(set(own) - rest)}, unexpected {sorted(rest - set(own))}")
        for k, t in own.items():
            t.copy_(stored[f"param.{k}"])
    return net.eval()


def _build_network(header: Mapping[str, Any], path: Path, allowed: Iterable[str], max_parameters: int) -> nn.Module:
    """The network a model file names: its class (format 1: its search space's), allowed and
    checked with its arguments before it is built."""
    plan: PrecisionPlan = header["plan"]
    if header["model_class"] is None:
        cls = get_search_space(plan.space_name).model_cls
        check_allowed_module(cls.__module__, f"{path}: network class {cls.__qualname__} of search space "
                             f"{plan.space_name!r}", allowed)
    else:
        try:
            cls = allowed_class(header["model_class"], allowed, base=nn.Module)
        except ValueError as e:
            raise ValueError(f"{path}: the network's {e}") from None
        if any(package_of(c.__module__) in LIGHTNING_PACKAGES for c in cls.__mro__):
            raise ValueError(f"{path}: the network's class path {header['model_class']!r} is a LightningModule, "
                             "not a network")
    if header["model_args"] is None:
        raise ValueError(f"{path} does not record the network's constructor arguments; "
                         f"load it into a network you build: load_quantized(path, model)")
    check_arguments(cls, header["model_args"], f"{path}: model_args")
    return _build_checked(cls, header["model_args"], path, max_parameters)


def _build_checked(cls: type[nn.Module], model_args: dict[str, Any], path: Path, max_parameters: int) -> nn.Module:
    """The network, built for real only after a build on the meta device (no memory) has shown it
    holds at most `max_parameters` parameters."""
    try:
        with torch.device("meta"):
            probe = cls(**model_args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: model_args do not build a {cls.__name__}: {e}") from None
    count = sum(p.numel() for p in dict((id(p), p) for p in probe.parameters()).values())
    if count > max_parameters:
        raise ValueError(f"{path}: model_args ask for a network of {count:,} parameters, above the limit of "
                         f"{max_parameters:,} (load_quantized(max_parameters=...) raises it)")
    return cls(**model_args)


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

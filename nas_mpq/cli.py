"""`nas-mpq <stage>`: each stage is a LightningCLI (YAML with class_path/init_args, --trainer.*,
--model.*, --data.* overrides, --print_config) plus a run directory it writes plain files to.

A config file is either one stage's config (trainer/model/data) or a pipeline config with a
section per stage (`pretrain:`, `search:`) and shared top-level keys (`data:`, `seed_everything:`)
merged into each section.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from jsonargparse import ArgumentParser
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from pytorch_lightning import LightningDataModule

from .strict_parser import StrictArgumentParser
from .errors import DEBUG_ENV, describe_yaml_error, run_reporting_errors
from .export import data_bytes, evaluation_data, load_quantized, read_header, save_quantized
from .files import atomic_output, write_atomic
from .lit import (AtomicCheckpointIO, FinalizeModule, LMTrainModule, SupernetModule, load_net_weights,
                  stream_metrics)
from .plots import plot_plan
from .tracking import WandbConfig, log_stage_results

STAGES = ("pretrain", "search", "finalize")
RESULT_FILES = {"pretrain": "model.ckpt", "search": "plan.json", "finalize": "model.safetensors",
                "sensitivity": "plan.json"}
PIPELINE_SHARED = ("data", "seed_everything", "wandb")
DEFAULT_DATA = "nas_mpq.data.LMDataModule"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config(path: str | Path) -> Any:
    """A YAML config file's content; a syntax error or non-UTF-8 text is a ValueError naming the
    file and the position."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {describe_yaml_error(e)}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def stage_args(stage: str, argv: list[str]) -> list[str]:
    """Replace `--config PIPELINE.yaml` by the stage's section (shared keys merged in)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        path = argv[i + 1] if a == "--config" and i + 1 < len(argv) else (
            a.split("=", 1)[1] if a.startswith("--config=") else None)
        if path is None:
            out.append(a)
            i += 1
            continue
        i += 2 if a == "--config" else 1
        cfg = read_config(path) if Path(path).is_file() else None
        if isinstance(cfg, dict) and any(s in cfg for s in STAGES):
            if stage not in cfg:
                raise SystemExit(f"error: {path} has no `{stage}:` section; it has "
                                 f"{[s for s in STAGES if s in cfg]}")
            shared = {k: cfg[k] for k in PIPELINE_SHARED if k in cfg}
            out += ["--config", yaml.safe_dump(_merge(shared, cfg[stage]), sort_keys=False)]
        else:
            out += ["--config", path]
    return out


class StageCLI(LightningCLI):
    """LightningCLI for one stage, with --run_dir, --init_ckpt, --resume, --overwrite and
    --wandb.*; `callbacks` are added to the trainer's (a sweep's pruning callback)."""

    def __init__(self, stage: str, model_class: type, args: list[str], callbacks: list[Any] = ()) -> None:
        self.stage, self.extra_callbacks = stage, list(callbacks)
        super().__init__(model_class, LightningDataModule, subclass_mode_data=True, run=False, args=args,
                         parser_class=StrictArgumentParser,
                         save_config_kwargs={"overwrite": True}, seed_everything_default=0,
                         parser_kwargs={"prog": f"nas-mpq {stage}"})

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--run_dir", type=str, default=None, help="where the stage writes its files")
        parser.add_argument("--init_ckpt", type=str | None, default=None,
                            help="initialise the network from this checkpoint (e.g. the FP32 model)")
        parser.add_argument("--resume", type=str | None, default=None,
                            help="resume from a checkpoint of this run ('last' for the newest)")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="replace the results of a previous run in --run_dir")
        parser.add_argument("--wandb", type=WandbConfig, default=WandbConfig(),
                            help="log to wandb (offline unless wandb.mode or WANDB_MODE says otherwise)")
        # data is any LightningDataModule (class_path/init_args); without a class_path it is the
        # LM corpus module, so `data: {corpus: ...}` configs read as before
        parser.set_defaults({"data": {"class_path": DEFAULT_DATA}})
        # an LM's vocabulary size comes from its corpus (skipped for data without vocab_size)
        parser.link_arguments("data.vocab_size", "model.net.init_args.vocab_size", apply_on="instantiate")
        # the data modules give each process its own share (an LM its contiguous streams, hidden
        # state carried across batches), so Lightning must not interleave batches across processes
        parser.set_defaults({"trainer.use_distributed_sampler": False})
        if self.stage == "finalize":
            parser.add_argument("--plan", type=str, required=True, help="the plan.json to finalize")
            parser.link_arguments("plan", "model.plan")
        if self.stage == "sensitivity":
            parser.add_argument("--ckpt", type=str, required=True, help="the trained FP32 checkpoint")
            parser.add_argument("--method", type=Literal["hessian", "kl", "uniform", "random"], default="hessian")
            parser.add_argument("--bits", type=int | None, default=None, help="uniform: the bit-width")
            parser.add_argument("--num_batches", type=int, default=4, help="batches to average over")
            parser.add_argument("--max_samples", type=int, default=100, help="hessian: Hutchinson samples per batch")
            parser.add_argument("--tol", type=float, default=1e-3, help="hessian: relative tolerance")

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        if not cfg.run_dir:
            raise SystemExit(f"error: nas-mpq {self.stage} needs --run_dir")
        self.run_dir = Path(cfg.run_dir)
        result = self.run_dir / RESULT_FILES[self.stage]
        ckpts = self.run_dir / "checkpoints"
        if not cfg.overwrite and result.exists():
            unfinished = (ckpts / "last.ckpt").is_file() and not (self.run_dir / "metrics.json").exists()
            raise SystemExit(f"error: {result} exists from a previous run; refusing to overwrite it "
                             "(pass --overwrite true to replace it, or choose another --run_dir"
                             + ("; that run did not finish: --resume last --overwrite true continues it)"
                                if unfinished else ")"))
        if not cfg.overwrite and cfg.resume is None and ckpts.is_dir() and any(ckpts.iterdir()):
            raise SystemExit(f"error: {ckpts} holds checkpoints of an unfinished run; pass --resume last "
                             "to continue it, or --overwrite to start again")
        cfg.trainer.default_root_dir = str(self.run_dir)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        every_epoch = self.stage == "search"  # finalize and pretrain keep the best by val/ppl
        checkpoint = ModelCheckpoint(dirpath=self.run_dir / "checkpoints", save_last=True,
                                     filename="epoch={epoch}" if every_epoch else "best",
                                     auto_insert_metric_name=False,
                                     monitor=None if every_epoch else "val/ppl", mode="min",
                                     save_top_k=-1 if every_epoch else 1)
        # LightningCLI lets a `callbacks` keyword replace the config's trainer.callbacks: keep both
        configured = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        kwargs["callbacks"] = [*configured, *kwargs.get("callbacks", []), checkpoint, *self.extra_callbacks]
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not one the config chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if not self.config.trainer.logger or self.config.trainer.logger is True:
            wandb = self.wandb_config().logger(self.run_dir, self.stage)
            trainer.loggers = [CSVLogger(self.run_dir, name="logs"), *([wandb] if wandb else [])]
        return trainer

    def wandb_config(self) -> WandbConfig:
        cfg = self.config.wandb
        return cfg if isinstance(cfg, WandbConfig) else WandbConfig(**cfg.as_dict())

    def finish(self, metrics: dict[str, Any], plan: Any = None) -> None:
        """Log the results to wandb, write metrics.json and print them (rank 0 only). metrics.json
        is the stage's completion marker: every stage writes it last, after all its other files."""
        if not self.trainer.is_global_zero:
            return
        log_stage_results(self.trainer.loggers, metrics, plan)
        write_atomic(self.run_dir / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        print(json.dumps(metrics, indent=1))


def _resume_path(cli: StageCLI) -> str | None:
    r = cli.config.resume
    if r is None:
        return None
    path = cli.run_dir / "checkpoints" / "last.ckpt" if r == "last" else Path(r)
    if not path.is_file():
        raise SystemExit(f"error: no checkpoint to resume at {path}")
    return str(path)


def run_pretrain(argv: list[str], callbacks: list[Any] = ()) -> int:
    cli = StageCLI("pretrain", LMTrainModule, stage_args("pretrain", argv), callbacks)
    if cli.config.init_ckpt:
        load_net_weights(cli.model.net, cli.config.init_ckpt)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=_resume_path(cli))
    best = cli.trainer.checkpoint_callback.best_model_path or cli.trainer.checkpoint_callback.last_model_path
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)[0]
    val = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)[0]
    model_ckpt = cli.run_dir / "model.ckpt"
    if cli.trainer.is_global_zero:
        with atomic_output(model_ckpt) as tmp:
            shutil.copyfile(best, tmp)
    metrics = {"stage": "pretrain", "val_ppl": val["val/ppl"], "test_ppl": test["test/ppl"],
               **({"val_acc": val["val/acc"], "test_acc": test["test/acc"]} if "test/acc" in test else {}),
               "epochs": cli.trainer.current_epoch, "checkpoint": str(model_ckpt)}
    if cli.model.plan is not None:
        r = cli.model.plan.size()
        metrics.update(plan=cli.config.model.plan, uniform_bits=cli.config.model.uniform_bits,
                       size_bits=r.size_bits, compression=r.compression,
                       avg_bits=r.avg_bits)
    cli.finish(metrics, cli.model.plan)
    return 0


def run_search(argv: list[str], callbacks: list[Any] = ()) -> int:
    cli = StageCLI("search", SupernetModule, stage_args("search", argv), callbacks)
    module: SupernetModule = cli.model
    if cli.config.init_ckpt:
        load_net_weights(module.net, cli.config.init_ckpt)
    cli.trainer.fit(module, datamodule=cli.datamodule, ckpt_path=_resume_path(cli))
    plan = module.derive_plan()
    rank0_bits = cli.trainer.strategy.broadcast(plan.bits)
    if rank0_bits != plan.bits:  # identical choices on every rank are what data parallelism relies on
        differ = sorted(n for n in plan.bits if plan.bits[n] != rank0_bits.get(n))
        raise RuntimeError(f"rank {cli.trainer.global_rank} derived a plan that differs from rank 0's "
                           f"in groups {differ}")
    if not cli.trainer.is_global_zero:
        return 0
    plan.save(cli.run_dir / "plan.json", overwrite=cli.config.overwrite)
    plot_plan(plan, cli.run_dir / "plan.png")
    r = plan.size()
    metrics = {"stage": "search", "val_ppl_history": module.val_history,
               "val_ppl": module.val_history[-1] if module.val_history else None,
               "expected_bits": float(module.regularizer.expected_avg_bits().detach()),
               "budget": {"kind": module.budget.kind, "value": module.budget.value},
               "size_bits": r.size_bits, "fp32_size_bits": r.fp32_size_bits,
               "compression": r.compression, "avg_bits": r.avg_bits,
               "bits_used": sorted(set(plan.bits.values())), "repair": plan.extra.get("repair"),
               **({"activation_bits": plan.activation_bits} if plan.activations else {})}
    print(plan.summary_table())
    repair = plan.extra.get("repair") or {}
    print(f"repair: {repair.get('groups_changed', 0)} groups changed, {repair.get('bits_moved', 0)} bits moved "
          f"(argmax plan avg {repair.get('argmax_avg_bits', r.avg_bits):.3f} bits -> {r.avg_bits:.3f}): "
          f"{repair.get('changed', {})}")
    cli.finish(metrics, plan)
    return 0


def _model_args(cli: StageCLI) -> dict[str, Any]:
    """Constructor arguments of the network, as the registry's builder takes them."""
    args = cli.config.model.net.init_args.as_dict()
    if hasattr(cli.datamodule, "vocab_size"):
        args["vocab_size"] = cli.datamodule.vocab_size
    return args


def _test_metrics(net: Any, datamodule: LightningDataModule) -> dict[str, float]:
    """test_ppl (and test_acc for a classifier) of a plain network in one process, exactly as
    `nas-mpq evaluate` computes them."""
    return {f"test_{k}": v for k, v in stream_metrics(net, datamodule.evaluation_batches("test")).items()}


def run_finalize(argv: list[str], callbacks: list[Any] = ()) -> int:
    cli = StageCLI("finalize", FinalizeModule, stage_args("finalize", argv), callbacks)
    module: FinalizeModule = cli.model
    if cli.config.init_ckpt:
        load_net_weights(module.net, cli.config.init_ckpt)
        module.reinitialize()
    cli.trainer.fit(module, datamodule=cli.datamodule, ckpt_path=_resume_path(cli))
    best = cli.trainer.checkpoint_callback.best_model_path or cli.trainer.checkpoint_callback.last_model_path
    history = list(module.val_history)
    cli.trainer.validate(module, datamodule=cli.datamodule, ckpt_path=best, verbose=False)  # loads the best
    if not cli.trainer.is_global_zero:
        return 0
    net = module.quantized_net()
    test = _test_metrics(net, cli.datamodule)
    space_args = module.space_config.overrides()
    path = save_quantized(cli.run_dir / "model.safetensors", net, module.plan, module.group_codes(),
                          _model_args(cli), space_args,
                          metadata={"data": cli.config.data.as_dict(), "method": module.method, **test},
                          overwrite=cli.config.overwrite)
    r = module.plan.size()
    best_epoch = 1 + min(range(len(history)), key=history.__getitem__) if history else None
    metrics = {"stage": "finalize", "method": module.method, **test,
               "val_ppl": min(history) if history else None, "val_ppl_history": history,
               "epochs_to_best_val": best_epoch, "size_bits": r.size_bits,
               "fp32_size_bits": r.fp32_size_bits, "compression": r.compression, "avg_bits": r.avg_bits,
               "file_bytes": path.stat().st_size, "data_bytes": data_bytes(path), "model": str(path)}
    cli.finish(metrics, module.plan)
    return 0


def run_evaluate(argv: list[str]) -> int:
    """`nas-mpq evaluate --model FILE [--data.*]`: test perplexity and sizes of a packed model."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    model = pre.parse_known_args(argv)[0].model
    parser = ArgumentParser(prog="nas-mpq evaluate",
                            description="test perplexity (accuracy for a classifier) and sizes of a packed model (JSON)")
    parser.add_argument("--model", type=str, required=True, help="a model.safetensors written by finalize")
    parser.add_subclass_arguments(LightningDataModule, "data", help="the data (default: what the model was trained on)")
    data: dict[str, Any] = {"class_path": DEFAULT_DATA}
    if model:
        data = evaluation_data(model, base=LightningDataModule)  # only a data module of nas_mpq / search_spaces
    parser.set_defaults({"data": data})
    cfg = parser.parse_args(argv)
    header = read_header(cfg.model)
    net = load_quantized(cfg.model)
    datamodule = parser.instantiate_classes(cfg).data
    r = header["plan"].size()
    result = {"model": cfg.model, **_test_metrics(net, datamodule), "size_bits": r.size_bits,
              "fp32_size_bits": r.fp32_size_bits, "compression": r.compression, "avg_bits": r.avg_bits,
              "file_bytes": Path(cfg.model).stat().st_size, "data_bytes": data_bytes(cfg.model)}
    print(json.dumps(result, indent=1))
    return 0


def run_sensitivity(argv: list[str]) -> int:
    from .sensitivity_stage import run
    return run(argv)


def run_pipeline(argv: list[str]) -> int:
    from .pipeline import run
    return run(argv)


def run_sweep(argv: list[str]) -> int:
    from .sweep import run
    return run(argv)


RUNNERS: dict[str, Callable[[list[str]], int]] = {
    "pretrain": run_pretrain, "search": run_search, "finalize": run_finalize, "evaluate": run_evaluate,
    "sensitivity": run_sensitivity, "run": run_pipeline, "sweep": run_sweep,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # each stage hands its own arguments to LightningCLI; its warning about sys.argv is moot here
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in RUNNERS:
        print(f"usage: nas-mpq {{{','.join(RUNNERS)}}} --config CONFIG.yaml --run_dir DIR [overrides]\n"
              "       nas-mpq evaluate --model DIR/model.safetensors [--data.*]\n"
              "       nas-mpq sweep --config sweeps/SPEC.yaml [--run_dir DIR] [--n_trials N] [--workers N]\n"
              "  each command takes --help; stages take --print_config; bad input is reported in one line,\n"
              f"  --debug (or {DEBUG_ENV}=1) shows the traceback instead", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return run_reporting_errors(argv[0], RUNNERS[argv[0]], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

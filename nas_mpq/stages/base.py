"""What every stage shares: a LightningCLI (YAML with class_path/init_args, --trainer.*, --model.*,
--data.* overrides, --print_config) plus a run directory that the stage writes plain files to.

A stage is a StageCLI subclass naming its LightningModule and its result file; `nas-mpq <stage>`
builds it from the command line, runs the trainer and calls `finish` with its metrics.

Example:
    >>> cli = SearchCLI(["--config", "configs/shakespeare_lstm/quick.yaml", "--run_dir", "runs/s"])
    >>> cli.trainer.fit(cli.model, datamodule=cli.datamodule)
"""
from __future__ import annotations

import json
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from pytorch_lightning import LightningDataModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from nas_mpq.files import write_atomic
from nas_mpq.lit import AtomicCheckpointIO
from nas_mpq.tracking import WandbConfig, log_stage_results

from .parser import StageArgumentParser

DEFAULT_DATA = "nas_mpq.data.LMDataModule"


class StageCLI(LightningCLI):
    """LightningCLI for one stage, with --run_dir, --init_ckpt, --resume, --overwrite and
    --wandb.*; `callbacks` are added to the trainer's (a sweep's pruning callback).

    `seed_everything` seeds the module too (its `seed` drives dropout masks and Gumbel noise)
    unless `--model.seed` is given. `check_only` parses and checks the arguments, builds and
    seeds nothing and raises ArgumentError for arguments the parser refuses (see `refusal`).

    Subclasses set `stage`, `model_class`, `result_file`, `section` (the pipeline config section
    they read, by default their stage) and `checkpoint_every_epoch` (else the best by val/ppl is
    kept).
    """

    stage: str
    model_class: type
    result_file: str
    section: str | None = None
    checkpoint_every_epoch = False

    def __init__(self, args: list[str], callbacks: list[Any] = (), check_only: bool = False) -> None:
        self.extra_callbacks, self.check_only = list(callbacks), check_only
        super().__init__(self.model_class, LightningDataModule, subclass_mode_data=True, run=False, args=args,
                         parser_class=StageArgumentParser,
                         save_config_kwargs={"overwrite": True}, seed_everything_default=0,
                         parser_kwargs={"prog": f"nas-mpq {self.stage}", "section": self.section or self.stage,
                                        "exit_on_error": not check_only})

    @classmethod
    def refusal(cls, args: list[str]) -> str | None:
        """None if the stage's parser accepts `args`, else its message; nothing is built or run."""
        try:
            cls(args, check_only=True)
        except ArgumentError as e:
            return str(e)
        return None

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
        # unset: the module takes seed_everything's value (see before_instantiate_classes)
        parser.set_defaults({"model.seed": None})

    def _set_seed(self) -> None:
        if not self.check_only:  # a check leaves the global random state alone
            super()._set_seed()

    def before_instantiate_classes(self) -> None:
        if self.check_only:
            return
        cfg = self.config
        # after LightningCLI has seeded: `seed_everything: true` is a number by now
        if cfg.model.seed is None:
            cfg.model.seed = 0 if isinstance(cfg.seed_everything, bool) else cfg.seed_everything
        if not cfg.run_dir:
            raise SystemExit(f"error: nas-mpq {self.stage} needs --run_dir")
        self.run_dir = Path(cfg.run_dir)
        result = self.run_dir / self.result_file
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

    def instantiate_classes(self) -> None:
        if not self.check_only:
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        every_epoch = self.checkpoint_every_epoch
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
        if self.config.trainer.logger in (None, True):  # Lightning's default logger: CSV in the run dir
            trainer.loggers = [CSVLogger(self.run_dir, name="logs")]
        wandb = self.wandb_config().logger(self.run_dir, self.stage)
        if wandb is not None:
            trainer.loggers = [*trainer.loggers, wandb]
        return trainer

    def wandb_config(self) -> WandbConfig:
        cfg = self.config.wandb
        return cfg if isinstance(cfg, WandbConfig) else WandbConfig(**cfg.as_dict())

    def resume_path(self) -> str | None:
        """The checkpoint --resume names (`last`: this run's newest), or None."""
        r = self.config.resume
        if r is None:
            return None
        path = self.run_dir / "checkpoints" / "last.ckpt" if r == "last" else Path(r)
        if not path.is_file():
            raise SystemExit(f"error: no checkpoint to resume at {path}")
        return str(path)

    def best_checkpoint(self) -> str:
        """The checkpoint kept as the best by val/ppl (the last one when none was monitored)."""
        callback = self.trainer.checkpoint_callback
        return callback.best_model_path or callback.last_model_path

    def finish(self, metrics: dict[str, Any], plan: Any = None) -> None:
        """Log the results to wandb, write metrics.json and print them (rank 0 only). metrics.json
        is the stage's completion marker: every stage writes it last, after all its other files."""
        if not self.trainer.is_global_zero:
            return
        log_stage_results(self.trainer.loggers, metrics, plan)
        write_atomic(self.run_dir / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        print(json.dumps(metrics, indent=1))


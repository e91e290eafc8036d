"""`nas-mpq pretrain`: train the FP32 network (or QAT at a plan: `--model.plan P`,
`--model.uniform_bits B`) and keep its best checkpoint by val/ppl as model.ckpt.

    nas-mpq pretrain --config configs/shakespeare_lstm/pretrain.yaml --run_dir runs/fp32
"""
from __future__ import annotations

import shutil
from typing import Any

from nas_mpq.files import atomic_output
from nas_mpq.lit import TrainModule, load_net_weights

from .base import StageCLI


class PretrainCLI(StageCLI):
    stage, model_class, result_file = "pretrain", TrainModule, "model.ckpt"


def run(argv: list[str], callbacks: list[Any] = ()) -> int:
    cli = PretrainCLI(argv, callbacks)
    if cli.config.init_ckpt:
        load_net_weights(cli.model.net, cli.config.init_ckpt)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.resume_path())
    best = cli.best_checkpoint()
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)[0]
    val = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)[0]
    model_ckpt = cli.run_dir / cli.result_file
    if cli.trainer.is_global_zero:
        with atomic_output(model_ckpt) as tmp:
            shutil.copyfile(best, tmp)
    metrics = {"stage": "pretrain", "val_ppl": val["val/ppl"], "test_ppl": test["test/ppl"],
               **({"val_acc": val["val/acc"], "test_acc": test["test/acc"]} if "test/acc" in test else {}),
               "epochs": cli.trainer.current_epoch, "checkpoint": str(model_ckpt)}
    if cli.model.plan is not None:
        r = cli.model.plan.size()
        metrics.update(plan=cli.config.model.plan, uniform_bits=cli.config.model.uniform_bits,
                       size_bits=r.size_bits, compression=r.compression, avg_bits=r.avg_bits)
    cli.finish(metrics, cli.model.plan)
    return 0

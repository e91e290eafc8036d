"""`nas-mpq finalize`: train the low-bit model at a plan (ADMM or STE), keep the best by val/ppl
and export it packed (model.safetensors).

    nas-mpq finalize --config configs/shakespeare_lstm/finalize.yaml --run_dir runs/admm \
                     --init_ckpt runs/fp32/model.ckpt --plan runs/search/plan.json
"""
from __future__ import annotations

from typing import Any

from nas_mpq.export import data_bytes, save_quantized
from nas_mpq.lit import FinalizeModule, load_net_weights
from nas_mpq.metrics import split_metrics

from .base import StageCLI


class FinalizeCLI(StageCLI):
    stage, model_class, result_file = "finalize", FinalizeModule, "model.safetensors"

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--plan", type=str, required=True, help="the plan.json to finalize")
        parser.link_arguments("plan", "model.plan")


def _model_args(cli: FinalizeCLI) -> dict[str, Any]:
    """Constructor arguments of the network, as the registry's builder takes them."""
    args = cli.config.model.net.init_args.as_dict()
    if hasattr(cli.datamodule, "vocab_size"):
        args["vocab_size"] = cli.datamodule.vocab_size
    return args


def run(argv: list[str], callbacks: list[Any] = ()) -> int:
    cli = FinalizeCLI(argv, callbacks)
    module: FinalizeModule = cli.model
    if cli.config.init_ckpt:
        load_net_weights(module.net, cli.config.init_ckpt)
        module.reinitialize()
    cli.trainer.fit(module, datamodule=cli.datamodule, ckpt_path=cli.resume_path())
    history = list(module.val_history)
    best = cli.best_checkpoint()
    cli.trainer.validate(module, datamodule=cli.datamodule, ckpt_path=best, verbose=False)  # loads the best
    if not cli.trainer.is_global_zero:
        return 0
    net = module.quantized_net()
    test = split_metrics(net, cli.datamodule, "test")
    path = save_quantized(cli.run_dir / cli.result_file, net, module.plan, module.group_codes(),
                          _model_args(cli),
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

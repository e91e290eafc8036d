"""Each plan of an allocator benchmark applied to the FP32 model's weights as they are, no training:
its validation perplexity (what the post-training search minimises) next to the test and
validation perplexity the same plan reaches after the finalize. It shows how far a plan's quality
before training predicts its quality after it. `--probe_steps N` also trains each plan from the
FP32 weights for N steps (STE at the plan, SGD at `--probe_lr`, the same batches for every plan)
and validates it: how far a short recovery predicts the finalized quality.

Reads <run_dir>/fp32/model.ckpt and every <run_dir>/avg<B>/<plan run>/plan.json (search,
sensitivity, random and uniform runs) with the finalized runs of the allocator benchmark
(benchmarks/allocators.py, which makes them); the network and data are those of
<configs>/search.yaml. Prints JSON: per plan, its average bits, `val_ppl_on_fp32`, and the mean
test / validation perplexity of its finalized runs (and `val_ppl_after_probe`); and the Spearman
rank correlations between each of those and the finalized test perplexity.

    python benchmarks/plans_on_fp32.py --configs configs/shakespeare_lstm --run_dir runs/alloc/lstm \
        --probe_steps 300
    python benchmarks/plans_on_fp32.py ... --probe_steps 300 --plans runs/exp/search/plan.json   # any plans
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from scipy.stats import spearmanr

from nas_mpq.data import LMDataModule
from nas_mpq.lit import TrainModule, load_net_weights
from allocators import finalized_runs
from search_wall import build


def plan_val_ppl(plan: Path, cfg: dict, data: LMDataModule, fp32_ckpt: Path, probe_steps: int = 0,
                    probe_lr: float = 2.0) -> float:
    """The plan's validation perplexity on the FP32 weights, after `probe_steps` steps of STE
    training at the plan (SGD at `probe_lr`, gradient norm clipped at 0.25, seed 0)."""
    pl.seed_everything(0, verbose=False)
    net = build(cfg["model"]["net"], vocab_size=data.vocab_size)
    load_net_weights(net, fp32_ckpt)
    module = TrainModule(net, lambda params: torch.optim.SGD(params, lr=probe_lr), plan=str(plan))
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    if probe_steps:
        pl.Trainer(max_steps=probe_steps, limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=0.25,
                   **quiet).fit(module, datamodule=data)
    return pl.Trainer(**quiet).validate(module, datamodule=data, verbose=False)[0]["val/ppl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="configs/shakespeare_lstm")
    ap.add_argument("--run_dir", default="runs/alloc/lstm")
    ap.add_argument("--probe_steps", type=int, default=0, help="also validate each plan after this many "
                    "training steps at it (0: only on the FP32 weights as they are)")
    ap.add_argument("--probe_lr", type=float, default=2.0, help="the probe's SGD learning rate")
    ap.add_argument("--plans", nargs="+", type=Path, help="probe these plan files instead of the benchmark's "
                    "finalized plans (no finalized figures; the FP32 model is still <run_dir>/fp32/model.ckpt)")
    args = ap.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    root = Path(args.run_dir)
    cfg = yaml.safe_load((Path(args.configs) / "search.yaml").read_text())
    data = LMDataModule(**cfg["data"])
    plans, fp32 = {}, root / "fp32" / "model.ckpt"
    for plan in args.plans or []:
        plans[str(plan)] = {"avg_bits": json.loads(plan.read_text())["avg_bits"],
                            **probed(plan, cfg, data, fp32, args.probe_steps, args.probe_lr)}
    if args.plans:
        print(json.dumps({"plans": plans, "probe_steps": args.probe_steps, "probe_lr": args.probe_lr}, indent=1))
        return
    for budget_dir in sorted(root.glob("avg*")):
        finalized = finalized_runs(budget_dir)
        for plan in sorted(budget_dir.glob("*/plan.json")):
            run = plan.parent.name
            if run.startswith("fin-") or run not in finalized:
                continue
            metrics = [json.loads((d / "metrics.json").read_text()) for d in finalized[run]]
            plans[f"{budget_dir.name}/{run}"] = {
                "avg_bits": json.loads(plan.read_text())["avg_bits"],
                **probed(plan, cfg, data, fp32, args.probe_steps, args.probe_lr),
                "finalized_test_ppl": round(statistics.fmean(m["test_ppl"] for m in metrics), 3),
                "finalized_val_ppl": round(statistics.fmean(m["val_ppl"] for m in metrics), 3),
                "finalized_runs": len(metrics)}
    rho = {key: spearman(plans, key) for key in ("val_ppl_on_fp32", "val_ppl_after_probe")
           if all(key in p for p in plans.values())}
    print(json.dumps({"plans": plans, "probe_steps": args.probe_steps, "probe_lr": args.probe_lr,
                      **{f"spearman_{key}_vs_finalized_test": r for key, r in rho.items()}}, indent=1))


def probed(plan: Path, cfg: dict, data: LMDataModule, fp32: Path, steps: int, lr: float) -> dict[str, float]:
    """The plan's validation perplexity on the FP32 weights, and after `steps` of the probe (if any)."""
    return {"val_ppl_on_fp32": round(plan_val_ppl(plan, cfg, data, fp32), 3),
            **({"val_ppl_after_probe": round(plan_val_ppl(plan, cfg, data, fp32, steps, lr), 3)} if steps else {})}


def spearman(plans: dict[str, dict], key: str) -> float | None:
    """Spearman's rho between the plans' `key` and their finalized test perplexity."""
    pairs = [(p[key], p["finalized_test_ppl"]) for p in plans.values()]
    return spearmanr(*zip(*pairs)).statistic if len(pairs) > 2 else None


if __name__ == "__main__":
    main()

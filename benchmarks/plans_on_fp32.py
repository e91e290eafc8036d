"""Each plan of an allocator benchmark applied to the FP32 model's weights as they are, no training:
its validation perplexity (what the post-training search minimises) next to the test and
validation perplexity the same plan reaches after the finalize. It shows how far a plan's quality
before training predicts its quality after it.

Reads <run_dir>/fp32/model.ckpt and every <run_dir>/avg<B>/<plan run>/plan.json (search,
sensitivity, random and uniform runs) with the finalized runs of the allocator benchmark
(benchmarks/allocators.py, which makes them); the network and data are those of
<configs>/search.yaml. Prints JSON: per plan, its average bits, `val_ppl_on_fp32`, and the mean
test / validation perplexity of its finalized runs; and the Spearman rank correlation between
the plans' validation perplexity on the FP32 weights and their finalized test perplexity.

    python benchmarks/plans_on_fp32.py --configs configs/shakespeare_lstm --run_dir runs/alloc/lstm
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import pytorch_lightning as pl
import yaml
from scipy.stats import spearmanr

from nas_mpq.data import LMDataModule
from nas_mpq.lit import TrainModule, load_net_weights
from allocators import finalized_runs
from search_wall import build


def val_ppl_on_fp32(plan: Path, cfg: dict, data: LMDataModule, fp32_ckpt: Path) -> float:
    net = build(cfg["model"]["net"], vocab_size=data.vocab_size)
    load_net_weights(net, fp32_ckpt)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.validate(TrainModule(net, plan=str(plan)), datamodule=data, verbose=False)[0]["val/ppl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="configs/shakespeare_lstm")
    ap.add_argument("--run_dir", default="runs/alloc/lstm")
    args = ap.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    root = Path(args.run_dir)
    cfg = yaml.safe_load((Path(args.configs) / "search.yaml").read_text())
    data = LMDataModule(**cfg["data"])
    plans = {}
    for budget_dir in sorted(root.glob("avg*")):
        finalized = finalized_runs(budget_dir)
        for plan in sorted(budget_dir.glob("*/plan.json")):
            run = plan.parent.name
            if run.startswith("fin-") or run not in finalized:
                continue
            metrics = [json.loads((d / "metrics.json").read_text()) for d in finalized[run]]
            plans[f"{budget_dir.name}/{run}"] = {
                "avg_bits": json.loads(plan.read_text())["avg_bits"],
                "val_ppl_on_fp32": round(val_ppl_on_fp32(plan, cfg, data, root / "fp32" / "model.ckpt"), 3),
                "finalized_test_ppl": round(statistics.fmean(m["test_ppl"] for m in metrics), 3),
                "finalized_val_ppl": round(statistics.fmean(m["val_ppl"] for m in metrics), 3),
                "finalized_runs": len(metrics)}
    pairs = [(p["val_ppl_on_fp32"], p["finalized_test_ppl"]) for p in plans.values()]
    rho = spearmanr(*zip(*pairs)).statistic if len(pairs) > 2 else None
    print(json.dumps({"plans": plans, "spearman_val_on_fp32_vs_finalized_test": rho}, indent=1))


if __name__ == "__main__":
    main()

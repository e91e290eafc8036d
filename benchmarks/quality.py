"""Test perplexity (and accuracy, for a classifier) of FP32, uniform-precision and searched
mixed-precision models, each finalized the same way, at one or more average-bit budgets. Every stage runs through the `nas-mpq` CLI in
its own directory under --run_dir (a stage whose result exists is reused, so an interrupted run
continues):

  fp32/                pretrain                                   (<configs>/pretrain.yaml)
  search-avg<B>/       search at budget avg_bits = B, from fp32   (<configs>/search.yaml)
  ste-avg<B>/          finalize the searched plan, STE (QAT)      (<configs>/finalize_ste.yaml if
                                                                   present, else finalize.yaml)
  admm-avg<B>/         finalize the searched plan, ADMM           (<configs>/finalize_admm.yaml if
                                                                   present, else finalize.yaml)
  uniform<b>-<method>/ finalize the uniform b-bit plan meeting the same budget

Prints JSON.

    python benchmarks/quality.py --budgets 2.0 --methods ste            # issue figures at 16x
    python benchmarks/quality.py --budgets 2.0 1.032 --methods ste admm
    python benchmarks/quality.py --configs configs/shakespeare_transformer --run_dir runs/bench-transformer --methods ste
    python benchmarks/quality.py --configs configs/digits_cnn --run_dir runs/bench-cnn --methods ste
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from nas_mpq.sensitivity import uniform_bits_for
from nas_mpq.plan import PrecisionPlan

KEYS = ("test_ppl", "val_ppl", "test_acc", "epochs_to_best_val", "avg_bits", "compression", "size_bits")


def stage(args: list[str], run_dir: Path, result: str, timings: dict[str, float]) -> dict:
    """`nas-mpq args --run_dir run_dir` unless run_dir/result exists; its metrics.json."""
    if not (run_dir / result).exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nas_mpq.cli", *args, "--run_dir", str(run_dir)], check=True)
        timings[run_dir.name] = round(time.perf_counter() - start, 1)
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="configs/shakespeare_lstm")
    ap.add_argument("--run_dir", default="runs/bench-quality")
    ap.add_argument("--budgets", type=float, nargs="+", default=[2.0], help="avg_bits budgets")
    ap.add_argument("--methods", nargs="+", default=["ste", "admm"], choices=["ste", "admm"])
    args = ap.parse_args()
    cfg, root = Path(args.configs), Path(args.run_dir)
    timings: dict[str, float] = {}
    fp32 = stage(["pretrain", "--config", str(cfg / "pretrain.yaml")], root / "fp32", "model.ckpt", timings)
    init = ["--init_ckpt", str(root / "fp32" / "model.ckpt")]
    out: dict = {"configs": str(cfg), "fp32": {k: fp32[k] for k in ("test_ppl", "val_ppl", "test_acc") if k in fp32}, "budgets": {}}
    for budget in args.budgets:
        name = f"avg{budget:g}"
        search = stage(["search", "--config", str(cfg / "search.yaml"), "--model.budget.value", str(budget), *init],
                       root / f"search-{name}", "plan.json", timings)
        plan_path = root / f"search-{name}" / "plan.json"
        plan = PrecisionPlan.load(plan_path)
        bits = uniform_bits_for(plan)
        uniform_plan = root / f"uniform{bits}" / "plan.json"
        if not uniform_plan.exists():
            plan.with_bits({n: bits for n in plan.groups}).save(uniform_plan)
        entry = {"search": {k: search[k] for k in ("val_ppl_history", "avg_bits", "compression", "bits_used")}}
        for method in args.methods:
            own = cfg / f"finalize_{method}.yaml"
            finalize = ["finalize", "--config", str(own if own.exists() else cfg / "finalize.yaml"), *init]
            mixed = stage([*finalize, "--plan", str(plan_path), "--model.method", method],
                          root / f"{method}-{name}", "model.safetensors", timings)
            uniform = stage([*finalize, "--plan", str(uniform_plan), "--model.method", method],
                            root / f"uniform{bits}-{method}", "model.safetensors", timings)
            entry[f"mixed_{method}"] = {k: mixed[k] for k in KEYS if k in mixed}
            entry[f"uniform{bits}_{method}"] = {k: uniform[k] for k in KEYS if k in uniform}
        out["budgets"][name] = entry
    out["seconds"] = timings
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

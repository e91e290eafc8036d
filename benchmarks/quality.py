"""Test perplexity of FP32, uniform-bit QAT and searched-plan QAT on one config family.

Runs the stages through the `nas-mpq` CLI, each in its own directory under --run_dir:
  fp32/        nas-mpq pretrain --config <configs>/pretrain.yaml
  search/      nas-mpq search   --config <configs>/search.yaml --init_ckpt fp32/model.ckpt
  qat-mixed/   nas-mpq pretrain --config <configs>/qat.yaml   --init_ckpt fp32/model.ckpt --model.plan search/plan.json
  qat-uniformB/ the same with --model.uniform_bits B
A stage whose result already exists is reused, so an interrupted run continues where it stopped.
Prints JSON.

    python benchmarks/quality.py --configs configs/shakespeare_lstm --run_dir runs/bench-quality
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def stage(cmd: list[str], run_dir: Path, result: str, timings: dict[str, float]) -> dict:
    """Run `nas-mpq cmd --run_dir run_dir` unless run_dir/result exists; its metrics.json."""
    if not (run_dir / result).exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nas_mpq.cli", *cmd, "--run_dir", str(run_dir)], check=True)
        timings[run_dir.name] = round(time.perf_counter() - start, 1)
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="configs/shakespeare_lstm")
    ap.add_argument("--run_dir", default="runs/bench-quality")
    ap.add_argument("--uniform_bits", type=int, default=2)
    args = ap.parse_args()
    cfg, root = Path(args.configs), Path(args.run_dir)
    timings: dict[str, float] = {}
    fp32 = stage(["pretrain", "--config", str(cfg / "pretrain.yaml")], root / "fp32", "model.ckpt", timings)
    init = ["--init_ckpt", str(root / "fp32" / "model.ckpt")]
    search = stage(["search", "--config", str(cfg / "search.yaml"), *init], root / "search", "plan.json", timings)
    qat = ["pretrain", "--config", str(cfg / "qat.yaml"), *init]
    mixed = stage([*qat, "--model.plan", str(root / "search" / "plan.json")], root / "qat-mixed",
                  "model.ckpt", timings)
    uniform = stage([*qat, "--model.uniform_bits", str(args.uniform_bits)],
                    root / f"qat-uniform{args.uniform_bits}", "model.ckpt", timings)
    keys = ("test_ppl", "val_ppl", "avg_bits", "compression", "size_bits")
    print(json.dumps({
        "configs": str(cfg),
        "fp32": {k: fp32[k] for k in ("test_ppl", "val_ppl")},
        "search": {k: search[k] for k in ("val_ppl_history", "avg_bits", "compression", "bits_used")},
        "mixed_qat": {k: mixed.get(k) for k in keys},
        f"uniform{args.uniform_bits}_qat": {k: uniform.get(k) for k in keys},
        "seconds": timings,
    }, indent=1))


if __name__ == "__main__":
    main()

"""Wall time of search plus finalize against the FP32 training of the same model, end to end on
one machine: the stages run one after another through the `nas-mpq` CLI with the flagship
configs (pretrain, then, with --init, the sensitivity the search starts from, the search from that
FP32 model, then the finalize of its plan), each in its own directory under --run_dir, nothing
else running in this process. Prints JSON: seconds per stage, the epochs each ran, and
(sensitivity + search + finalize) / pretrain (`after_pretrain_over_pretrain`).

    python benchmarks/pipeline_wall.py --configs configs/shakespeare_lstm --search search_frozen \\
        --run_dir runs/pipeline_wall
    python benchmarks/pipeline_wall.py --configs configs/shakespeare_lstm --pretrain pretrain_averaged \\
        --search search_short --init hessian --run_dir runs/pipeline_wall_short
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas_mpq.cli", *args], check=True)
    return round(time.perf_counter() - start, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="configs/shakespeare_lstm")
    ap.add_argument("--search", default="search_frozen", help="the search config's name in --configs")
    ap.add_argument("--pretrain", default="pretrain", help="the FP32 config's name in --configs")
    ap.add_argument("--init", choices=["kl", "hessian"], default=None,
                    help="start the search from this sensitivity (its stage is timed with the search's cost)")
    ap.add_argument("--run_dir", default="runs/pipeline_wall")
    args = ap.parse_args()
    root, cfg = Path(args.run_dir), Path(args.configs)
    for name in (args.pretrain, args.search, "finalize", *(["search"] if args.init else [])):
        if not (cfg / f"{name}.yaml").exists():
            ap.error(f"no config {cfg / name}.yaml; valid: {sorted(p.stem for p in cfg.glob('*.yaml'))}")
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"error: {root} is not empty; give a new --run_dir (this benchmark times whole runs)")
    fp32 = root / "fp32" / "model.ckpt"
    seconds = {"pretrain": timed(["pretrain", "--config", str(cfg / f"{args.pretrain}.yaml"),
                                  "--run_dir", str(root / "fp32")])}
    init = []
    if args.init is not None:
        seconds["sensitivity"] = timed(["sensitivity", "--config", str(cfg / "search.yaml"), "--ckpt", str(fp32),
                                        "--method", args.init, "--num_batches", "2",
                                        "--run_dir", str(root / "sensitivity")])
        init = ["--model.init_sensitivity", str(root / "sensitivity" / "sensitivity.json")]
    seconds["search"] = timed(["search", "--config", str(cfg / f"{args.search}.yaml"), "--init_ckpt", str(fp32),
                               *init, "--run_dir", str(root / "search")])
    seconds["finalize"] = timed(["finalize", "--config", str(cfg / "finalize.yaml"), "--init_ckpt", str(fp32),
                                 "--plan", str(root / "search" / "plan.json"), "--run_dir", str(root / "finalize")])
    metrics = {s: json.loads((root / d / "metrics.json").read_text()) for s, d in
               (("pretrain", "fp32"), ("search", "search"), ("finalize", "finalize"))}
    print(json.dumps({
        "configs": str(cfg), "pretrain_config": args.pretrain, "search_config": args.search, "init": args.init,
        "seconds": seconds,
        "epochs": {"pretrain": metrics["pretrain"].get("epochs"),
                   "search": len(metrics["search"].get("val_ppl_history") or []),
                   "finalize": len(metrics["finalize"].get("val_ppl_history") or [])},
        "test_ppl": {"fp32": metrics["pretrain"].get("test_ppl"), "finalized": metrics["finalize"].get("test_ppl")},
        "after_pretrain_over_pretrain": round(sum(v for k, v in seconds.items() if k != "pretrain")
                                                    / seconds["pretrain"], 3),
        "goal": 1.5}, indent=1))


if __name__ == "__main__":
    main()

"""Every stage on an accelerator, as the commands a user runs: for each quick config, the main job
(`nas-mpq run`: pretrain, search, finalize with export, the uniform reference, the report) with
`--trainer.accelerator gpu`, then the Hessian (Hutchinson, double backward) and KL sensitivity of
its FP32 model and `nas-mpq evaluate` of its packed model (which runs on the CPU). Each stage trains --epochs epochs
(a check that the whole path runs on the device, not a quality figure). Prints JSON: each command's
wall seconds and the figures it wrote (stdout: the JSON alone; the stages' output goes to
stderr); the first command that fails stops the check and is named.

    python benchmarks/stages_on_gpu.py [--configs configs/shakespeare_lstm/quick.yaml ...]
                                       [--run_dir runs/stages-gpu] [--epochs 1] [--accelerator gpu]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["configs/shakespeare_lstm/quick.yaml", "configs/shakespeare_transformer/quick.yaml",
         "configs/digits_cnn/quick.yaml"]


def timed(args: list[str]) -> float:
    """Seconds `nas-mpq args` took; exits with its status, naming it, when it fails."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nas_mpq.cli", *args], cwd=ROOT, stdout=sys.stderr)
    if done.returncode != 0:
        raise SystemExit(f"error: `nas-mpq {' '.join(args)}` failed with exit status {done.returncode}")
    return round(time.perf_counter() - start, 1)


def check_config(config: str, run_dir: Path, epochs: int, accelerator: str) -> dict:
    on_device = ["--trainer.accelerator", accelerator, "--trainer.devices", "1", "--trainer.max_epochs", str(epochs)]
    seconds = {"run": timed(["run", "--config", config, "--run_dir", str(run_dir / "run"), *on_device])}
    report = json.loads((run_dir / "run" / "report.json").read_text())
    fp32 = str(run_dir / "run" / "pretrain" / "model.ckpt")
    sensitivity = {}
    for method in ("hessian", "kl"):
        folder = run_dir / f"sensitivity-{method}"
        seconds[f"sensitivity_{method}"] = timed(["sensitivity", "--config", config, "--ckpt", fp32, "--method", method,
                                                  "--num_batches", "2", "--run_dir", str(folder), *on_device[:4]])
        sensitivity[method] = json.loads((folder / "plan.json").read_text())["avg_bits"]
    start = time.perf_counter()
    evaluated = subprocess.run([sys.executable, "-m", "nas_mpq.cli", "evaluate", "--model",
                                str(run_dir / "run" / "finalize" / "model.safetensors")],
                               cwd=ROOT, capture_output=True, text=True)
    if evaluated.returncode != 0:
        raise SystemExit(f"error: nas-mpq evaluate failed on {run_dir}: {evaluated.stderr.strip()[-2000:]}")
    seconds["evaluate"] = round(time.perf_counter() - start, 1)
    return {"seconds": seconds, "report": report, "sensitivity_plan_avg_bits": sensitivity,
            "evaluate": json.loads(evaluated.stdout)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=QUICK)
    ap.add_argument("--run_dir", type=Path, default=Path("runs/stages-gpu"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--accelerator", default="gpu", help="Lightning's accelerator name (gpu, cpu, ...)")
    args = ap.parse_args()
    import torch  # after the arguments: --help needs no torch
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    results = {"device": device, "torch": torch.__version__, "epochs": args.epochs, "configs": {}}
    for config in args.configs:
        results["configs"][config] = check_config(config, args.run_dir / Path(config).parent.name, args.epochs,
                                                  args.accelerator)
        print(json.dumps({config: results["configs"][config]["seconds"]}), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

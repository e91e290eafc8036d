"""Allocators compared on honest baselines: the same finalize, trained until validation stops
improving, for every plan at the same budget; several seeds; mean and standard deviation.

Arms, per avg-bits budget B (every stage through the `nas-mpq` CLI, in its own directory under
--run_dir; a stage whose result exists is reused, so an interrupted run continues where it stopped):

  fp32/                    pretrain (<configs>/pretrain.yaml: the strong FP32 baseline)
  fp32-continued/          the FP32 model trained further as finalize trains a plan, no quantization
                           (<configs>/pretrain_continued.yaml)
  avg<B>/sens-{kl,hessian}/  sensitivity allocation (knapsack on Omega) at B
  avg<B>/random-s<k>/      random plan at B, seed k
  avg<B>/nas-s<k>/         NAS search at B, seed k (<configs>/search.yaml)
  avg<B>/nas-kl-s<k>/      NAS search initialised from the KL sensitivity, seed k
  avg<B>/uniform<b>/       the uniform b-bit plan (only where b bits is exactly B)
  avg<B>/fin-<arm>-s<k>/   finalize of that arm's plan (<configs>/finalize.yaml), seed k: every arm,
                           deterministic plans included, is finalized once per seed

Each run directory records the arguments it was made with (bench_run.json); a finished run made
with other arguments stops the benchmark instead of being reused. Prints JSON (every run and the per-arm mean / std of test and validation perplexity), writes
<run_dir>/allocators.json and <run_dir>/allocators.png (test perplexity against average bits,
error bars = one standard deviation over seeds).

    python benchmarks/allocators.py --configs configs/shakespeare_lstm --run_dir runs/alloc/lstm
    python benchmarks/allocators.py --configs configs/shakespeare_transformer --run_dir runs/alloc/transformer
    python benchmarks/allocators.py ... --budgets 2.0 --seeds 0 --arms uniform nas   # a first look
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARMS = ("uniform", "nas", "kl", "hessian", "random", "nas_kl")
"""In the order they run: the most informative figures first, so a stopped run has them."""


class NotRun(Exception):
    """A run that does not exist: --report_only found it unfinished, or the arm has none here."""


def stage(args: list[str], run_dir: Path, result: str, log: dict[str, float], run: bool = True) -> dict:
    """`nas-mpq args --run_dir run_dir` unless that run finished (its metrics.json, written last);
    its metrics.json. run_dir/bench_run.json records the arguments and seconds: a finished run made
    with other arguments is an error, never reused silently; an unfinished one is resumed."""
    record = run_dir / "bench_run.json"
    if (run_dir / "metrics.json").exists():
        done = json.loads(record.read_text()) if record.exists() else {"args": args, "seconds": None}
        if done["args"] != args:
            raise SystemExit(f"error: {run_dir} holds a run made with other arguments ({done['args']}); "
                             f"move it away to rerun it with {args}")
        record.write_text(json.dumps(done) + "\n")
        log[str(run_dir)] = done["seconds"]
        return json.loads((run_dir / "metrics.json").read_text())
    if not run:
        raise NotRun(str(run_dir))
    start = time.perf_counter()
    again = ["--resume", "last"] if (run_dir / "checkpoints" / "last.ckpt").is_file() else []
    if (run_dir / result).exists():  # stopped between its result and its metrics: redo it
        again = ["--overwrite", "true"]
    subprocess.run([sys.executable, "-m", "nas_mpq.cli", *args, "--run_dir", str(run_dir), *again], check=True)
    log[str(run_dir)] = round(time.perf_counter() - start, 1)
    record.write_text(json.dumps({"args": args, "seconds": log[str(run_dir)]}) + "\n")
    return json.loads((run_dir / "metrics.json").read_text())


def uniform_bits(budget: float, candidates: list[int]) -> int | None:
    """The uniform bit-width that is exactly the avg-bits budget (None: no uniform plan is)."""
    return int(budget) if budget == int(budget) and int(budget) in candidates else None


class Bench:
    def __init__(self, configs: Path, root: Path, timings: dict[str, float], run: bool = True) -> None:
        self.configs, self.root, self.timings, self.run = configs, root, timings, run
        self.fp32_ckpt = str(root / "fp32" / "model.ckpt")

    def cfg(self, name: str) -> str:
        return str(self.configs / f"{name}.yaml")

    def fp32(self) -> dict:
        return stage(["pretrain", "--config", self.cfg("pretrain")], self.root / "fp32", "model.ckpt", self.timings, self.run)

    def fp32_continued(self) -> dict:
        return stage(["pretrain", "--config", self.cfg("pretrain_continued"), "--init_ckpt", self.fp32_ckpt],
                     self.root / "fp32-continued", "model.ckpt", self.timings, self.run)

    def sensitivity(self, folder: Path, method: str, budget: float, seed: int = 0) -> Path:
        stage(["sensitivity", "--config", self.cfg("search"), "--ckpt", self.fp32_ckpt, "--method", method,
               "--num_batches", "2", "--model.budget.value", str(budget), "--seed_everything", str(seed)],
              folder, "plan.json", self.timings, self.run)
        return folder / "plan.json"

    def search(self, folder: Path, budget: float, seed: int, init: Path | None = None) -> Path:
        more = ["--model.init_sensitivity", str(init)] if init is not None else []
        stage(["search", "--config", self.cfg("search"), "--init_ckpt", self.fp32_ckpt,
               "--model.budget.value", str(budget), "--seed_everything", str(seed), "--model.seed", str(seed),
               *more], folder, "plan.json", self.timings, self.run)
        return folder / "plan.json"

    def uniform_plan(self, folder: Path, budget: float, bits: int) -> Path:
        stage(["sensitivity", "--config", self.cfg("search"), "--ckpt", self.fp32_ckpt, "--method", "uniform",
               "--bits", str(bits), "--model.budget.value", str(budget)], folder, "plan.json", self.timings, self.run)
        return folder / "plan.json"

    def finalize(self, folder: Path, plan: Path, seed: int) -> dict:
        return stage(["finalize", "--config", self.cfg("finalize"), "--init_ckpt", self.fp32_ckpt,
                      "--plan", str(plan), "--seed_everything", str(seed), "--model.seed", str(seed)],
                     folder, "model.safetensors", self.timings, self.run)


def run_arm(bench: Bench, arm: str, budget: float, seeds: list[int], candidates: list[int]) -> list[dict]:
    """The finalized runs of one arm at one budget, one per seed: the seed of the search or random
    plan and of its finalize; a deterministic plan (uniform, KL, Hessian) is finalized once per
    seed, so every arm's spread covers the finalize's."""
    base = bench.root / f"avg{budget:g}"
    runs = []
    for seed in seeds:
        try:
            runs.append(_finalized(bench, arm, budget, seed, candidates, base))
        except NotRun:
            continue
    return runs


def _finalized(bench: Bench, arm: str, budget: float, seed: int, candidates: list[int], base: Path) -> dict:
    """The finalized run of one arm, budget and seed (NotRun if --report_only finds it missing)."""
    if arm == "uniform":
        bits = uniform_bits(budget, candidates)
        if bits is None:
            raise NotRun(f"no uniform plan is exactly avg {budget:g} bits")
        plan = bench.uniform_plan(base / f"uniform{bits}", budget, bits)
    elif arm in ("kl", "hessian"):
        plan = bench.sensitivity(base / f"sens-{arm}", arm, budget)
    elif arm == "random":
        plan = bench.sensitivity(base / f"random-s{seed}", "random", budget, seed)
    elif arm == "nas":
        plan = bench.search(base / f"nas-s{seed}", budget, seed)
    else:  # nas_kl
        bench.sensitivity(base / "sens-kl", "kl", budget)
        plan = bench.search(base / f"nas-kl-s{seed}", budget, seed, base / "sens-kl" / "sensitivity.json")
    return bench.finalize(base / f"fin-{arm}-s{seed}", plan, seed)


def summarise(runs: list[dict]) -> dict:
    def stats(key: str) -> dict[str, float | None]:
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values:
            return {"mean": None, "std": None}
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    return {"n": len(runs), "test_ppl": stats("test_ppl"), "val_ppl": stats("val_ppl"),
            "avg_bits": stats("avg_bits"), "compression": stats("compression"),
            "epochs_to_best_val": [r.get("epochs_to_best_val") for r in runs],
            "runs": [{k: r.get(k) for k in ("test_ppl", "val_ppl", "avg_bits", "model")} for r in runs]}


def plot(results: dict, fp32: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    arms = sorted({arm for b in results.values() for arm in b})
    for i, arm in enumerate(arms):
        pts = [(s["avg_bits"]["mean"] + 0.012 * (i - len(arms) / 2), s["test_ppl"]["mean"], s["test_ppl"]["std"])
               for b in results.values() for a, s in b.items() if a == arm and s["test_ppl"]["mean"] is not None]
        if pts:
            xs, ys, es = zip(*sorted(pts))
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=arm)
    ax.axhline(fp32["test_ppl"], color="k", ls="--", lw=1, label="FP32")
    ax.set_xlabel("average bits (searched weights)")
    ax.set_ylabel("test perplexity")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="configs/shakespeare_lstm")
    ap.add_argument("--run_dir", default="runs/alloc/lstm")
    ap.add_argument("--budgets", type=float, nargs="+", default=[2.0, 1.5], help="avg_bits budgets")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 4, 8, 32],
                    help="the search space's candidates (for the uniform arm)")
    ap.add_argument("--report_only", action="store_true",
                    help="run nothing: summarise the finished runs (a table of an unfinished benchmark)")
    args = ap.parse_args()
    root = Path(args.run_dir)
    timings: dict[str, float] = {}
    bench = Bench(Path(args.configs), root, timings, run=not args.report_only)
    fp32 = bench.fp32()
    try:
        continued = bench.fp32_continued()
    except NotRun:
        continued = {}
    results: dict[str, dict[str, dict]] = {}
    for seed_pass in ([args.seeds[0]], args.seeds[1:]):  # every arm's first seed before any second
        for budget in args.budgets:
            for arm in args.arms:
                run_arm(bench, arm, budget, seed_pass, args.candidates)
    for budget in args.budgets:
        results[f"avg{budget:g}"] = {arm: summarise(runs) for arm in args.arms
                                     if (runs := run_arm(bench, arm, budget, args.seeds, args.candidates))}
    arms_val = [r["val_ppl"] for b in results.values() for s in b.values() for r in s["runs"] if r["val_ppl"]]
    out = {"configs": args.configs, "seeds": args.seeds,
           "fp32": {k: fp32.get(k) for k in ("test_ppl", "val_ppl", "epochs")},
           "fp32_continued": {k: continued.get(k) for k in ("test_ppl", "val_ppl", "epochs")},
           "fp32_best_val": all(fp32["val_ppl"] <= v for v in arms_val),  # better than every finalized run
           "budgets": results, "seconds": timings}
    (root / "allocators.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(results, fp32, root / "allocators.png")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Allocators compared on honest baselines: the same finalize, trained until validation stops
improving, for every plan at the same budget; several seeds; mean and standard deviation.

Arms, per avg-bits budget B (every stage through the `nas-mpq` CLI, in its own directory under
--run_dir; a stage whose result exists is reused, so an interrupted run continues where it stopped):

  fp32/                    pretrain (<configs>/<--pretrain>.yaml, default pretrain.yaml): the
                           FP32 model every arm starts from
  fp32-continued/          the FP32 model trained further as finalize trains a plan, no quantization
                           (<configs>/pretrain_continued.yaml)
  fp32-averaged/           FP32 trained with an exponential moving average of its weights
                           (<configs>/pretrain_averaged.yaml); a baseline only, unless
                           `--pretrain pretrain_averaged` makes it the start of every arm (then
                           it is fp32/ and not trained twice)
  avg<B>/sens-{kl,hessian}/  sensitivity allocation (knapsack on Omega) at B
  avg<B>/random-s<k>/      random plan at B, seed k
  avg<B>/nas-s<k>/         NAS search at B, seed k (<configs>/search.yaml)
  avg<B>/nas-kl-s<k>/      NAS search initialised from the KL sensitivity, seed k
  avg<B>/nas-kl-frozen-s<k>/  the same with the weights frozen during the search (weight lr 0):
                           only the choices move, judged on the FP32 weights
  avg<B>/nas-frozen-s<k>/  the post-training search (<configs>/search_frozen.yaml: the choices alone
                           on the FP32 weights, the best validated epoch's plan), from the prior
  avg<B>/nas-hessian-frozen-s<k>/  the same, initialised from the Hessian sensitivity
  avg<B>/nas-hessian-at-plan-s<k>/  the bi-level search with its weights trained at its current plan
                           (<configs>/search_at_plan.yaml), initialised from the Hessian sensitivity
  avg<B>/nas-hessian-probe-s<k>/  the same, with the plan picked at equal training: the start plan and
                           the best-validated plans each trained briefly from the FP32 weights
                           (<configs>/search_probe.yaml)
  avg<B>/nas-hessian-short-s<k>/  the same search cut to 2 epochs (<configs>/search_short.yaml)
  avg<B>/nas-hessian-kp-s<k>/  the short search with dual_kp 5 (ARM_OVERRIDES)
  avg<B>/nas-hessian-fast-s<k>/  the short search with arch_every 4 and refit_every 8 (ARM_OVERRIDES)
  avg<B>/uniform<b>/       the uniform b-bit plan (only where b bits is exactly B)
  avg<B>/fin-<arm>-s<k>/   finalize of that arm's plan (<configs>/finalize.yaml), seed k: every arm,
                           deterministic plans included, is finalized once per seed

Each run directory records the arguments and the digest of the config's settings it was made
with (bench_run.json), and its environment (torch's threads, versions); a finished run made with other arguments
or other settings stops the benchmark instead of being reused (an edited comment does not). `--ledger FILE` keeps every
finished run's small results (plans, sensitivities, metrics) in FILE (benchmarks/results/*.json,
committed), so the benchmark continues on another machine: kept runs are restored, not rerun,
and the FP32 model is retrained (it must reproduce the kept figure) only when a stage that needs
it is still to run, or for `--fp32_ckpt`. Arms may run in
separate processes side by side (`--arms ...`) on one ledger. Prints JSON (every run and the
per-arm mean / std of test and validation perplexity), writes <run_dir>/allocators.json and
<run_dir>/allocators.png (test perplexity against average bits, error bars = one standard
deviation over seeds).

    python benchmarks/allocators.py --configs configs/shakespeare_lstm --run_dir runs/alloc/lstm \
        --ledger benchmarks/results/allocators-lstm.json
    python benchmarks/allocators.py --configs configs/shakespeare_transformer --run_dir runs/alloc/transformer-v3 \
        --ledger benchmarks/results/allocators-transformer-v3.json --pretrain pretrain_averaged
    python benchmarks/allocators.py --configs configs/shakespeare_lstm --run_dir runs/alloc/lstm-v3 \
        --ledger benchmarks/results/allocators-lstm-v3.json --pretrain pretrain_averaged   # from the averaged FP32
    python benchmarks/allocators.py ... --budgets 2.0 --seeds 0 --arms uniform nas   # a first look
    python benchmarks/allocators.py ... --report_only                                # the table so far
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning
import torch
import yaml
from matplotlib import colormaps
from matplotlib.figure import Figure

from nas_mpq.files import write_atomic
from nas_mpq.stages.run import restart_flags

BASELINES = ("fp32_continued", "fp32_averaged")
"""FP32 arms beside the FP32 model every plan starts from: trained once, no plan, no seeds."""
ARMS = ("uniform", "nas", "kl", "hessian", "random", "nas_kl", *BASELINES, "nas_kl_frozen",
        "nas_frozen", "nas_hessian_frozen", "nas_hessian_at_plan", "nas_hessian_probe",
        "nas_hessian_short", "nas_hessian_kp", "nas_hessian_fast")
"""In the order the plan arms run (the most informative figures first, so a stopped run has
them); the BASELINES run after every plan arm. Arms can run in several processes side by side
(`--arms`), sharing one --ledger."""
ARM_CONFIG = {"fp32_continued": "pretrain_continued", "fp32_averaged": "pretrain_averaged",
              "nas_frozen": "search_frozen", "nas_hessian_frozen": "search_frozen",
              "nas_hessian_at_plan": "search_at_plan", "nas_hessian_probe": "search_probe",
              "nas_hessian_short": "search_short", "nas_hessian_kp": "search_short",
              "nas_hessian_fast": "search_short"}
"""The config an arm needs beside pretrain, search and finalize: without --arms, the arms whose
config the --configs folder lacks are left out."""
ARM_OVERRIDES = {"nas_hessian_kp": ["--model.dual_kp", "5"],
                 "nas_hessian_fast": ["--model.arch_every", "4", "--model.refit_every", "8"]}
"""Settings an arm's search sets on top of its config: the budget controller's proportional part
(kp), a cheaper iteration (fast: the choices' step on every 4th batch, the scales fitted on every
8th)."""


class NotRun(Exception):
    """A run that does not exist: --report_only found it unfinished, or the arm has none here."""


KEPT = ("plan.json", "sensitivity.json", "metrics.json")
"""A finished run's small results, in the order they are restored (metrics.json, the marker, last)."""
RUN_FIELDS = ("config_sha256", "seconds", "environment")
"""What a run's record holds besides its arguments (bench_run.json and the ledger alike; runs
recorded before environments were kept have none)."""


def config_digest(args: list[str]) -> str:
    """SHA-256 of the settings of the config file a stage's arguments name (the YAML parsed, keys
    sorted): a setting changed since a run was made makes that run stale even though its arguments
    are the same; an edited comment or layout does not."""
    settings = yaml.safe_load(_config(args).read_text())
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def file_digest(args: list[str]) -> str:
    """SHA-256 of the config file's bytes: what runs were recorded with before config_digest; such
    a run is accepted while the file is unchanged and then recorded with config_digest."""
    return hashlib.sha256(_config(args).read_bytes()).hexdigest()


def _config(args: list[str]) -> Path:
    return Path(args[args.index("--config") + 1])


class Ledger:
    """Every finished run's arguments, config digest, seconds and small results (plans,
    sensitivities, metrics) in one JSON file (benchmarks/results/, committed): a run directory that
    is gone (a fresh machine, a cleaned runs/) is restored from it instead of rerun, so the
    benchmark continues across machines. Checkpoints are not kept; the FP32 model is retrained
    when a stage that needs it still has to run (or for --fp32_ckpt), and must reproduce the kept
    validation figure."""

    def __init__(self, path: Path | None, root: Path) -> None:
        self.path, self.root = path, root
        self.runs: dict[str, dict] = json.loads(path.read_text()) if path is not None and path.exists() else {}

    def key(self, run_dir: Path) -> str:
        return run_dir.relative_to(self.root).as_posix()

    def entry(self, run_dir: Path) -> dict | None:
        """The kept run, its arguments with this benchmark's run directory in them (kept as {root})."""
        entry = self.runs.get(self.key(run_dir))
        return None if entry is None else {**entry, "args": [a.replace("{root}", str(self.root)) for a in entry["args"]]}

    def restore(self, run_dir: Path) -> None:
        entry = self.entry(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            if name in entry["files"]:
                (run_dir / name).write_text(entry["files"][name])
        (run_dir / "bench_run.json").write_text(json.dumps(
            {"args": entry["args"], **{k: entry[k] for k in RUN_FIELDS if k in entry},
             "restored_from": str(self.path)}) + "\n")

    def record(self, run_dir: Path, done: dict) -> None:
        """Add a finished run; merged under a lock with what other benchmark processes (other arms
        run side by side) added since, and replaced atomically."""
        if self.path is None:
            return
        files = {name: (run_dir / name).read_text() for name in KEPT if (run_dir / name).exists()}
        args = [a.replace(str(self.root), "{root}") for a in done["args"]]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                self.runs.update(json.loads(self.path.read_text()))
            self.runs[self.key(run_dir)] = {"args": args, **{k: done[k] for k in RUN_FIELDS if k in done},
                                            "files": files}
            write_atomic(self.path, json.dumps(dict(sorted(self.runs.items())), indent=1) + "\n")


def stage(args: list[str], run_dir: Path, bench: "Bench", before_run=None, restore: bool = True) -> dict:
    """`nas-mpq args --run_dir run_dir` unless that run finished (its metrics.json, written last)
    here or in the ledger; its metrics. run_dir/bench_run.json records the arguments, the config's
    digest and the seconds: a finished run made with other arguments or another config is an
    error, never reused silently; an unfinished one is resumed. `before_run` is called only when
    the stage really runs (it makes sure the FP32 checkpoint exists); `restore=False` ignores the
    ledger, reading and writing (a run retrained for its checkpoint: the kept entry stays).
    `environment` records torch's threads and the versions the stage ran with (`environment()`)."""
    record = run_dir / "bench_run.json"
    config = _config(args)
    if not config.exists():  # no run can have been made with it
        if not bench.run:
            raise NotRun(str(run_dir))
        raise SystemExit(f"error: {config} does not exist; {run_dir} needs it (write it, or leave out the arm "
                         f"that runs it with --arms)")
    digest = config_digest(args)
    entry = bench.ledger.entry(run_dir) if restore else None
    if not (run_dir / "metrics.json").exists() and entry is not None:
        _check_same(run_dir, entry, args, digest, f"the ledger {bench.ledger.path}")
        bench.ledger.restore(run_dir)
    if (run_dir / "metrics.json").exists():
        done = json.loads(record.read_text()) if record.exists() else {"args": args, "seconds": None}
        done.setdefault("config_sha256", digest)  # runs recorded before digests were kept
        _check_same(run_dir, done, args, digest, str(run_dir))
        done["config_sha256"] = digest  # a run recorded with the file's digest: now with the settings'
        record.write_text(json.dumps(done) + "\n")
        if (bench.ledger.entry(run_dir) or {}).get("config_sha256") != digest:
            bench.ledger.record(run_dir, done)
        bench.timings[str(run_dir)] = done["seconds"]
        return json.loads((run_dir / "metrics.json").read_text())
    if not bench.run:
        raise NotRun(str(run_dir))
    if before_run is not None:
        before_run()
    start = time.perf_counter()
    again = restart_flags(run_dir, args)  # an unfinished run continues from its last checkpoint
    subprocess.run([sys.executable, "-m", "nas_mpq.cli", *args, "--run_dir", str(run_dir), *again], check=True)
    done = {"args": args, "config_sha256": digest, "seconds": round(time.perf_counter() - start, 1),
            "environment": environment()}
    bench.timings[str(run_dir)] = done["seconds"]
    record.write_text(json.dumps(done) + "\n")
    if restore:
        bench.ledger.record(run_dir, done)
    return json.loads((run_dir / "metrics.json").read_text())


def environment() -> dict:
    """What a run's numbers depend on besides its config and code: torch's intra-op threads (the
    stage inherits them; a float sum's order depends on them) and the versions it ran with."""
    return {"threads": torch.get_num_threads(), "python": sys.version.split()[0], "torch": torch.__version__,
            "pytorch_lightning": pytorch_lightning.__version__}


def differences(kept: dict | None) -> str:
    """How this environment differs from a kept run's, as advice."""
    if kept is None:
        return "the kept run did not record its environment (threads, versions), which training may depend on"
    now = environment()
    changed = [f"{k} {kept[k]} then, {now.get(k)} now" for k in kept if kept[k] != now.get(k)]
    if not changed:
        return "it was made in the same environment (threads, versions): the code differs, or it is not deterministic"
    hint = f" (set OMP_NUM_THREADS={kept['threads']})" if kept.get("threads") != now["threads"] else ""
    return "the environment differs: " + ", ".join(changed) + hint


def _check_same(run_dir: Path, done: dict, args: list[str], digest: str, where: str) -> None:
    if done["args"] != args:
        raise SystemExit(f"error: {where} holds a run of {run_dir} made with other arguments ({done['args']}); "
                         f"move it away to rerun it with {args}")
    if done["config_sha256"] not in (digest, file_digest(args)):
        raise SystemExit(f"error: {where} holds a run of {run_dir} made with another version of "
                         f"{args[args.index('--config') + 1]}; move it away to rerun it")


def uniform_bits(budget: float, candidates: list[int]) -> int | None:
    """The uniform bit-width that is exactly the avg-bits budget (None: no uniform plan is)."""
    return int(budget) if budget == int(budget) and int(budget) in candidates else None


class Bench:
    def __init__(self, configs: Path, root: Path, ledger: Path | None = None, run: bool = True,
                 pretrain: str = "pretrain") -> None:
        self.configs, self.root, self.run, self.pretrain = configs, root, run, pretrain
        self.timings: dict[str, float | None] = {}
        self.ledger = Ledger(ledger, root)
        self.fp32_ckpt = str(root / "fp32" / "model.ckpt")

    def cfg(self, name: str) -> str:
        return str(self.configs / f"{name}.yaml")

    def fp32(self, restore: bool = True) -> dict:
        return stage(["pretrain", "--config", self.cfg(self.pretrain)], self.root / "fp32", self,
                     restore=restore)

    def need_fp32_ckpt(self) -> None:
        """Retrain the FP32 model when its run was restored from the ledger without its checkpoint;
        the retrained model must reproduce the kept validation perplexity (every arm starts from
        the same model), else the benchmark stops."""
        if Path(self.fp32_ckpt).exists():
            return
        folder = self.root / "fp32"
        entry = self.ledger.entry(folder) or {}
        kept = json.loads(entry.get("files", {}).get("metrics.json") or (folder / "metrics.json").read_text())
        kept_environment = entry.get("environment")
        (folder / "metrics.json").unlink()
        print(f"retraining the FP32 model ({folder} was restored without its checkpoint)", file=sys.stderr)
        again = self.fp32(restore=False)
        if abs(again["val_ppl"] - kept["val_ppl"]) > 1e-3 * kept["val_ppl"]:
            Path(self.fp32_ckpt).rename(folder / "model.unreproduced.ckpt")  # never taken for the kept model
            raise SystemExit(f"error: the retrained FP32 model has validation perplexity {again['val_ppl']:.3f}, "
                             f"the ledger's {kept['val_ppl']:.3f}: the arms would not share one FP32 model; "
                             f"{differences(kept_environment)}; move the ledger {self.ledger.path} away to start the "
                             f"benchmark again (the ledger keeps its entry; the retrained model is left in "
                             f"{folder / 'model.unreproduced.ckpt'})")

    def after_fp32(self, args: list[str], folder: Path) -> dict:
        return stage(args, folder, self, before_run=self.need_fp32_ckpt)

    def baselines(self) -> tuple[str, ...]:
        """BASELINES less the one that is the FP32 model every arm starts from."""
        return tuple(arm for arm in BASELINES if ARM_CONFIG[arm] != self.pretrain)

    def baseline(self, arm: str) -> dict:
        """The metrics of one of BASELINES."""
        if arm == "fp32_continued":
            return self.after_fp32(["pretrain", "--config", self.cfg(ARM_CONFIG[arm]), "--init_ckpt",
                                    self.fp32_ckpt], self.root / "fp32-continued")
        if arm == "fp32_averaged":
            return stage(["pretrain", "--config", self.cfg(ARM_CONFIG[arm])], self.root / "fp32-averaged", self)
        raise ValueError(f"unknown baseline {arm!r}; valid: {list(BASELINES)}")

    def sensitivity(self, folder: Path, method: str, budget: float, seed: int = 0) -> Path:
        self.after_fp32(["sensitivity", "--config", self.cfg("search"), "--ckpt", self.fp32_ckpt, "--method", method,
                         "--num_batches", "2", "--model.budget.value", str(budget), "--seed_everything", str(seed)],
                        folder)
        return folder / "plan.json"

    def search(self, folder: Path, budget: float, seed: int, init: Path | None = None, frozen: bool = False,
               config: str = "search", overrides: tuple[str, ...] | list[str] = ()) -> Path:
        more = ["--model.init_sensitivity", str(init)] if init is not None else []
        more += ["--model.optimizer.lr", "0.0"] if frozen else []
        more += overrides
        self.after_fp32(["search", "--config", self.cfg(config), "--init_ckpt", self.fp32_ckpt,
                         "--model.budget.value", str(budget), "--seed_everything", str(seed), "--model.seed", str(seed),
                         *more], folder)
        return folder / "plan.json"

    def uniform_plan(self, folder: Path, budget: float, bits: int) -> Path:
        self.after_fp32(["sensitivity", "--config", self.cfg("search"), "--ckpt", self.fp32_ckpt, "--method", "uniform",
                         "--bits", str(bits), "--model.budget.value", str(budget)], folder)
        return folder / "plan.json"

    def finalize(self, folder: Path, plan: Path, seed: int) -> dict:
        return self.after_fp32(["finalize", "--config", self.cfg("finalize"), "--init_ckpt", self.fp32_ckpt,
                                "--plan", str(plan), "--seed_everything", str(seed), "--model.seed", str(seed)],
                               folder)


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
    elif arm == "nas_frozen":
        plan = bench.search(base / f"nas-frozen-s{seed}", budget, seed, config=ARM_CONFIG[arm])
    elif arm.startswith("nas_hessian_"):
        bench.sensitivity(base / "sens-hessian", "hessian", budget)
        kind = arm.removeprefix("nas_hessian_").replace("_", "-")
        plan = bench.search(base / f"nas-hessian-{kind}-s{seed}", budget, seed,
                            base / "sens-hessian" / "sensitivity.json", config=ARM_CONFIG[arm],
                            overrides=ARM_OVERRIDES.get(arm, ()))
    else:  # nas_kl, nas_kl_frozen
        bench.sensitivity(base / "sens-kl", "kl", budget)
        frozen = arm == "nas_kl_frozen"
        plan = bench.search(base / f"nas-kl{'-frozen' if frozen else ''}-s{seed}", budget, seed,
                            base / "sens-kl" / "sensitivity.json", frozen)
    return bench.finalize(base / f"fin-{arm}-s{seed}", plan, seed)


def finalized_runs(budget_dir: Path) -> dict[str, list[Path]]:
    """The finished finalize runs under one budget's directory, by the name of the run whose plan
    each finalized (read from its bench_run.json)."""
    out: dict[str, list[Path]] = {}
    for fin in sorted(budget_dir.glob("fin-*")):
        record = fin / "bench_run.json"
        if (fin / "metrics.json").exists() and record.exists():
            args = json.loads(record.read_text())["args"]
            out.setdefault(Path(args[args.index("--plan") + 1]).parent.name, []).append(fin)
    return out


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


def plot(results: dict, fp32: dict[str, float], path: Path) -> None:
    """Test perplexity against average bits per arm (error bars: one standard deviation), and a
    horizontal line (dashed, dotted, dash-dotted) per FP32 model in `fp32` (label -> test perplexity)."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    arms = sorted({arm for b in results.values() for arm in b})
    for i, arm in enumerate(arms):
        dodge = 0.02 * (i / max(len(arms) - 1, 1) - 0.5)  # arms side by side, at most 0.01 bits off
        pts = [(s["avg_bits"]["mean"] + dodge, s["test_ppl"]["mean"], s["test_ppl"]["std"])
               for b in results.values() for a, s in b.items() if a == arm and s["test_ppl"]["mean"] is not None]
        if pts:
            xs, ys, es = zip(*sorted(pts))
            # 20 colours and 9 markers: more arms than the default colour cycle stay distinct
            ax.errorbar(xs, ys, yerr=es, marker="os^Dv<>ph"[i % 9], color=colormaps["tab20"](i % 20), capsize=3,
                        label=arm)
    for i, (label, ppl) in enumerate(fp32.items()):
        ax.axhline(ppl, color="k", ls=("--", ":", "-.")[i % 3], lw=1, label=label)
    ax.set_xlabel("average bits (searched weights)")
    ax.set_ylabel("test perplexity")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def stop_stages_on_sigterm() -> None:
    """SIGTERM (a `kill` of the benchmark) exits through SystemExit, so the stage running in a
    subprocess is killed with it (subprocess.run does so on any exception) instead of running on,
    orphaned, beside a restarted benchmark that resumes the same run."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> None:
    stop_stages_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="configs/shakespeare_lstm")
    ap.add_argument("--run_dir", default="runs/alloc/lstm")
    ap.add_argument("--budgets", type=float, nargs="+", default=[2.0, 1.5], help="avg_bits budgets")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", choices=ARMS,
                    help="default: every arm whose config (ARM_CONFIG) is in --configs")
    ap.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 4, 8, 32],
                    help="the search space's candidates (for the uniform arm)")
    ap.add_argument("--ledger", type=Path, default=None,
                    help="a JSON file of finished runs (benchmarks/results/...): runs found there are restored, "
                         "not rerun, and every run finished is added to it")
    ap.add_argument("--report_only", action="store_true",
                    help="run nothing: summarise the finished runs (a table of an unfinished benchmark)")
    ap.add_argument("--pretrain", default="pretrain",
                    help="the config (in --configs, without .yaml) of the FP32 model every arm starts from")
    ap.add_argument("--fp32_ckpt", action="store_true",
                    help="leave <run_dir>/fp32/model.ckpt for commands that read it: retrained (and checked against "
                         "the kept validation figure) when the ledger restored the FP32 run without it")
    args = ap.parse_args()
    if args.fp32_ckpt and args.report_only:
        ap.error("--fp32_ckpt trains when the checkpoint is missing; --report_only runs nothing: give one of them")
    root = Path(args.run_dir)
    starts = sorted(p.stem for p in Path(args.configs).glob("pretrain*.yaml") if p.stem != ARM_CONFIG["fp32_continued"])
    if args.pretrain not in starts:  # pretrain_continued continues a model: no start
        ap.error(f"--pretrain {args.pretrain!r}: not an FP32 config in {args.configs}; valid: {starts}")
    bench = Bench(Path(args.configs), root, args.ledger, run=not args.report_only, pretrain=args.pretrain)
    try:
        fp32 = bench.fp32()
    except NotRun:
        raise SystemExit(f"error: no finished FP32 run in {root / 'fp32'} or the ledger: nothing to report") from None
    if args.fp32_ckpt:
        bench.need_fp32_ckpt()
    wanted = args.arms or [a for a in ARMS if (bench.configs / f"{ARM_CONFIG.get(a, 'search')}.yaml").exists()]
    arms = [a for a in wanted if a not in BASELINES]
    results: dict[str, dict[str, dict]] = {}
    for seed_pass in ([args.seeds[0]], args.seeds[1:]):  # every arm's first seed before any second
        for budget in args.budgets:
            for arm in arms:
                run_arm(bench, arm, budget, seed_pass, args.candidates)
    reader = Bench(bench.configs, root, args.ledger, run=False, pretrain=args.pretrain)  # baselines not asked for
    baselines = {}
    for arm in bench.baselines():
        try:
            baselines[arm] = (bench if arm in wanted else reader).baseline(arm)
        except NotRun:
            baselines[arm] = {}
    for budget in args.budgets:
        results[f"avg{budget:g}"] = {arm: summarise(runs) for arm in arms
                                     if (runs := run_arm(bench, arm, budget, args.seeds, args.candidates))}
    arms_val = [r["val_ppl"] for b in results.values() for s in b.values() for r in s["runs"] if r["val_ppl"]]
    averaged = baselines.get("fp32_averaged", fp32)  # the start itself with --pretrain pretrain_averaged
    out = {"configs": args.configs, "pretrain": args.pretrain, "seeds": args.seeds,
           "fp32": {k: fp32.get(k) for k in ("test_ppl", "val_ppl", "epochs")},
           **{arm: {k: r.get(k) for k in ("test_ppl", "val_ppl", "epochs")} for arm, r in baselines.items()},
           "fp32_best_val": all(fp32["val_ppl"] <= v for v in arms_val),  # better than every finalized run
           "fp32_averaged_best_val": averaged.get("val_ppl") is not None
                                     and all(averaged["val_ppl"] <= v for v in arms_val),
           "budgets": results, "seconds": bench.timings}
    (root / "allocators.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = {"FP32": fp32["test_ppl"]} if averaged is not fp32 else {}
    lines["FP32, weights averaged"] = averaged.get("test_ppl")
    plot(results, {k: v for k, v in lines.items() if v is not None}, root / "allocators.png")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

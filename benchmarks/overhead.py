"""Cost of a supernet step relative to an FP32 training step, in one process.

On one of the search spaces with candidates {1, 2, 4, 8, 32} on every group (--space): the Tiny
Shakespeare LSTM LM (2 x 256 LSTM, 10k vocabulary, batches 32 x 35 of the real corpus, 18 groups),
the Tiny Shakespeare Transformer LM (2 layers, d_model 128, per-head groups, batches 32 x 64) or
the digits CNN (width 16, batches of 64 images), it measures per step (forward, loss, backward,
Adam step):
  fp32          the float model;
  supernet      the same model with a soft Gumbel-softmax choice per group: one composite weight
                per layer, one forward; the groups that are equal blocks of one weight (an
                LSTM weight's gates, attention heads) quantized together in one pass;
  supernet_by_group
                the same with every group quantized on its own (the Gumbel noise still drawn
                for every choice in one pass);
  supernet_refit8
                the supernet step with the quantizer scales fitted on every 8th step only and
                kept in between (SupernetModule's refit_every 8); its ratio (`refit_ratio`) is
                its mean step over whole periods of 8 timed steps against FP32's mean over the
                same steps, not the median (7 of 8 steps fit nothing; --steps 24 holds two);
  bilevel       one whole search iteration as SupernetModule runs it: an arch step on a search
                batch (task loss plus the budget term, clipped) plus a weight step (clipped) and
                the multiplier's update (two batches, so about twice a step by construction);
  bilevel_every2, bilevel_every4
                the same with arch_every 2 and 4: the arch step on every 2nd / 4th batch only;
  bilevel_at_plan
                the iteration of the flagship search configs' mode (`weights_at: plan`): the weight step
                at the plan the search would return now (the argmax repaired by the knapsack,
                derived again after each arch step), each group pinned to one width;
  bilevel_at_plan_every4_refit8
                the same with arch_every 4 and refit_every 8, the settings of the flagship
                search config (search_fast.yaml) on this model; its `iteration_ratio.search_fast`
                is the mean over whole periods of 8 timed batches (two arch steps and one fit
                each) against FP32's over the same batches;
  post_training one step of the post-training search (train_weights false): the arch step on a
                search batch with the weights frozen (no weight gradient, each weight's scales
                fitted once) and the multiplier's update; the training batch only keeps time;
  supernet_fused, supernet_refit8_fused, bilevel_at_plan_every4_refit8_fused (with --fuse)
                the supernet step, its refit_every 8 form and the search_fast iteration with
                fuse_candidates on: each weight's soft candidates quantized and mixed in one
                torch.compile'd pass, their dL/dy in another (compiled on two batches before the
                timing; `fused.compile_s`: the seconds of that warm-up, each configuration built
                and run for two steps, compilation included); in search_fast only the arch
                steps' composites are soft, so only they fuse (the weight step runs at the plan);
  kpath         the reference without the composite weight: K = 5 forward passes, one per
                candidate, their logits mixed by the sample (K quantized weight sets and K sets of
                activations kept for backward).
Step time is the median over --steps steps, the configurations interleaved step by step so
machine noise hits them alike. The iteration ratios (`iteration_ratio`) take the mean time per
training batch over windows of 4 consecutive batches (each window holds the same share of arch
steps: 4, 2 or 1), median over the windows, against FP32's over the same windows (search_fast's:
the mean over whole periods of 8 batches, above). Peak memory is
the peak resident set size during a step (sampled every 0.2 ms from /proc/self/statm) above the
resident size before the model was built, with free heap memory handed back to the OS
(malloc_trim) before each configuration; with --device cuda every step runs on the GPU, each
timed step ends with a device synchronisation and peak memory is the CUDA allocator's peak
(measured after one pass over every configuration, which allocates the libraries' workspaces).
`operators_per_step`: the PyTorch operators one more step of each configuration dispatches on
the device it runs on (profiled after the timing; nested calls counted too): a GPU step of a
model this small costs about a fixed time per operator. Then, unless --search_epochs is 0, the whole search's
wall time against FP32 training on the quick LSTM config (search_wall.py).
Prints JSON; goals: supernet/fp32 step ratio <= 1.10 (LSTM, Transformer) and <= 1.20 (digits CNN),
whole search iteration / FP32 step <= 1.4 with the flagship search config (search_fast), memory
ratio <= 1.2.

    python benchmarks/overhead.py [--space lstm_lm|transformer_lm|cnn] [--steps 15]
                                  [--search_epochs 1] [--search_batches N] [--device cpu|cuda] [--fuse]
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import itertools
import json
import logging
import os
import statistics
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable
from unittest import mock

import torch
from pytorch_lightning import LightningDataModule
from pytorch_lightning.utilities import move_data_to_device
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from nas_mpq.data import DigitsDataModule, LMDataModule
from nas_mpq.lit import batch_logits
from nas_mpq.plan import Budget
from nas_mpq.search import (BudgetRegularizer, GumbelSampler, SearchSpace, derive_plan, fuse_candidates,
                            get_sampler, hold_fitted_scales, prepare_search_, search_groups, training_at_plan)
from search_wall import REFIT_EVERY, search_wall_time
from search_spaces.cnn import ResNetCNN, cnn_space
from search_spaces.lstm_lm import LSTMLM, lstm_lm_space
from search_spaces.transformer_lm import TransformerLM, transformer_lm_space

CANDIDATES = [1, 2, 4, 8, 32]
ARCH_EVERY = (1, 2, 4)
FAST_ARCH_EVERY = 4
FAST = f"bilevel_at_plan_every{FAST_ARCH_EVERY}_refit{REFIT_EVERY}"
FAST_CONFIG = "search_fast"
assert REFIT_EVERY % FAST_ARCH_EVERY == 0, "a refit period must hold whole arch periods"
"""FAST is the iteration with the flagship search config's settings (configs/shakespeare_lstm/
search_fast.yaml: weights at the plan, the arch step on every 4th batch, the scales fitted on every
8th) on this benchmark's model (the LSTM untied, 18 groups, where the config ties the embedding
and splits it into 8 frequency buckets, 24 groups); its iteration ratio is the mean over whole
periods of REFIT_EVERY batches (a multiple of 4), where the others are medians over windows."""
WINDOW = 4
"""Batches per window of the iteration ratios: a multiple of every ARCH_EVERY."""
Step = Callable[[tuple], None]


@dataclass
class Setup:
    """A search space's benchmark model, its space and its data."""

    describe: str
    make_net: Callable[[], nn.Module]
    space: SearchSpace
    data: LightningDataModule
    device: torch.device


def setup(name: str, device: torch.device) -> Setup:
    if name == "cnn":
        return Setup("cnn ResNet width 16 (3 stages), digits 8x8, batch 64", lambda: ResNetCNN(10, width=16),
                     cnn_space(CANDIDATES), DigitsDataModule(batch_size=64), device)
    bptt = 64 if name == "transformer_lm" else 35
    dm = LMDataModule("tinyshakespeare", max_vocab=10000, batch_size=32, bptt=bptt)
    vocab = dm.vocab_size
    if name == "transformer_lm":
        return Setup(f"transformer_lm 2 layers d128 4 heads, per-head groups, vocab {vocab}, batch 32x64",
                     lambda: TransformerLM(vocab, 128, 4, 2, max_len=64, dropout=0.2),
                     transformer_lm_space(CANDIDATES, grouping="head", blocks=4), dm, device)
    return Setup(f"lstm_lm 2x256, vocab {vocab}, batch 32x35", lambda: LSTMLM(vocab, 256, 256, 2, dropout=0.5),
                 lstm_lm_space(CANDIDATES), dm, device)


def loss_of(net: nn.Module, batch: tuple) -> torch.Tensor:
    logits, y, _ = batch_logits(net, batch, None)
    return F.cross_entropy(logits, y)


def make_net(s: Setup) -> nn.Module:
    torch.manual_seed(0)
    return s.make_net().to(s.device).train()


def train_step(net: nn.Module, opt: torch.optim.Optimizer) -> Step:
    """Forward, loss, backward and optimizer step on one batch."""
    def step(batch: tuple) -> None:
        loss = loss_of(net, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def fp32_step(s: Setup) -> Step:
    net = make_net(s)
    return train_step(net, torch.optim.Adam(net.parameters(), lr=1e-3))


def supernet(s: Setup, fuse: bool = False) -> tuple[nn.Module, list, list]:
    net = prepare_search_(make_net(s), s.space, sampler=GumbelSampler(tau=1.0)).to(s.device)
    fuse_candidates(net, fuse)
    theta = [g.choice.theta for g in search_groups(net)]
    weights = [p for p in net.parameters() if all(p is not t for t in theta)]
    return net, weights, theta


def supernet_step(s: Setup, fuse: bool = False) -> Step:
    net, weights, theta = supernet(s, fuse)
    return train_step(net, torch.optim.Adam([{"params": weights}, {"params": theta}], lr=1e-3))


def supernet_by_group_step(s: Setup) -> Step:
    """supernet_step with each group's composite computed on its own (no block_composite)."""
    step = supernet_step(s)

    def by_group(batch: tuple) -> None:
        with mock.patch("nas_mpq.search.layers.block_composite", lambda *args: None):
            step(batch)
    return by_group


def supernet_refit_step(s: Setup, every: int = REFIT_EVERY, fuse: bool = False) -> Step:
    """supernet_step with the scales kept while the weights change, fitted again every `every`
    steps (as SupernetModule's refit_every holds them)."""
    net, weights, theta = supernet(s, fuse)
    step = train_step(net, torch.optim.Adam([{"params": weights}, {"params": theta}], lr=1e-3))
    steps = itertools.count()

    def refit(batch: tuple) -> None:
        hold_fitted_scales(net, hold=True, forget=next(steps) % every == 0)
        step(batch)
    return refit


def bilevel_step(s: Setup, search_batch: tuple, arch_every: int = 1, at_plan: bool = False,
                 refit_every: int = 1, fuse: bool = False) -> Step:
    """One iteration of SupernetModule's search: on every arch_every-th batch the arch step on
    the search batch, then the weight step on the batch, then (after an arch step) the
    multiplier's update, and on every batch the measures the module logs. `at_plan`: the weight
    step at the plan the search would return now (the argmax repaired by the knapsack, derived
    again after each arch step; `weights_at: plan`); `refit_every` > 1: the scales fitted on every
    refit_every-th batch only and held in between (counted over the whole run: the module counts
    within an epoch, the same for timing). `fuse`: `fuse_candidates` on."""
    net, weights, theta = supernet(s, fuse)
    w_opt, a_opt = torch.optim.Adam(weights, lr=1e-3), torch.optim.Adam(theta, lr=3e-2)
    target = Budget("avg_bits", 2.0)
    budget = BudgetRegularizer(net, target)
    mu = torch.zeros((), device=s.device)
    batches = itertools.count()
    plan = None

    def update(loss: torch.Tensor, opt: torch.optim.Optimizer, params: list, clip: float) -> None:
        w_opt.zero_grad()
        a_opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    def weight_loss(batch: tuple) -> torch.Tensor:
        if not at_plan:
            return loss_of(net, batch)
        with training_at_plan(net, plan):
            return loss_of(net, batch)

    def step(batch: tuple) -> None:
        nonlocal plan
        i = next(batches)
        if refit_every > 1:
            hold_fitted_scales(net, hold=True, forget=i % refit_every == 0)
        arch_step = i % arch_every == 0
        if arch_step:
            update(loss_of(net, search_batch) + budget.penalty(mu, 5.0), a_opt, theta, 5.0)
            if at_plan:
                plan = derive_plan(net, s.space, target, 0.99)
        update(weight_loss(batch), w_opt, weights, 1.0)
        ratio = budget.argmax_measure() / budget.capacity
        if arch_step:
            mu.copy_(budget.update_dual(mu, 0.05, ratio))
        with torch.no_grad():
            budget.expected_avg_bits(), budget.mean_entropy()
    return step


def post_training_step(s: Setup, search_batch: tuple) -> Step:
    """One step of SupernetModule's search with train_weights false: the arch step on the search
    batch, the weights frozen, then the multiplier's update."""
    net, weights, theta = supernet(s)
    for p in weights:
        p.requires_grad_(False)
    a_opt = torch.optim.Adam(theta, lr=3e-2)
    budget = BudgetRegularizer(net, Budget("avg_bits", 2.0))
    mu = torch.zeros((), device=s.device)

    def step(batch: tuple) -> None:
        a_opt.zero_grad()
        (loss_of(net, search_batch) + budget.penalty(mu, 5.0)).backward()
        nn.utils.clip_grad_norm_(theta, 5.0)
        a_opt.step()
        mu.copy_(budget.update_dual(mu, 0.05, budget.argmax_measure() / budget.capacity))
    return step


def kpath_step(s: Setup) -> Step:
    """K full forward passes with every group at candidate k, logits mixed by one sample y."""
    net = prepare_search_(make_net(s), s.space).to(s.device)
    groups = search_groups(net)
    sampler = get_sampler(net)
    theta = torch.zeros(len(CANDIDATES), device=s.device, requires_grad=True)
    float_net = make_net(s)
    params = dict(float_net.named_parameters())
    opt = torch.optim.Adam([*float_net.parameters(), theta], lr=1e-3)

    def quantized(k: int) -> dict[str, torch.Tensor]:
        out = dict(params)
        parts: dict[str, list] = {}
        for g in groups:
            w = params[g.plan.param]
            q = g.choice.quantizers[k]
            if g.plan.rows is None:
                out[g.plan.param] = q(w)
            else:  # gates, heads: quantize each slice, then reassemble the tensor
                parts.setdefault(g.plan.param, []).append((g.plan.rows[0], g.plan.axis, q(g.plan.view(w))))
        for name, pieces in parts.items():
            pieces.sort(key=lambda p: p[0])
            out[name] = torch.cat([p[2] for p in pieces], dim=pieces[0][1])
        return out

    def step(batch: tuple) -> None:
        mix = sampler.sample(theta)
        logits, y = 0.0, None
        for k in range(len(CANDIDATES)):
            logits_k, y, _ = batch_logits(lambda *a: functional_call(float_net, quantized(k), a), batch, None)
            logits = logits + mix[k] * logits_k
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size in a thread while the block runs."""

    def __enter__(self) -> "PeakRSS":
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.0002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def release_free_memory() -> None:
    gc.collect()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(libc, "malloc_trim"):  # glibc: give freed heap pages back, so RSS is live memory
        libc.malloc_trim(0)


def peak_memory(build: Callable[[], Step], batches: list[tuple], device: torch.device) -> int:
    """Peak memory of two steps above the memory before the model was built: the resident set
    size on the CPU, the CUDA caching allocator's peak of allocated bytes on a GPU."""
    release_free_memory()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
    else:
        base = rss_bytes()
    step = build()
    step(batches[0])  # optimizer state exists from the first step on
    peak = 0
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for batch in batches[1:3]:
        if device.type == "cuda":
            step(batch)
            synchronize(device)
            peak = max(peak, torch.cuda.max_memory_allocated(device))
        else:
            with PeakRSS() as p:
                step(batch)
            peak = max(peak, p.peak)
    del step
    return peak - base


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a step's time is its whole work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def operators_per_step(step: Step, batch: tuple) -> int:
    """PyTorch operators one step dispatches (torch.profiler's aten:: calls, views and nested
    calls included): on a GPU each costs the host a dispatch and most launch a kernel, so for a
    small model the step time follows this count rather than the arithmetic."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(batch)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def window_means(times: list[float]) -> list[float]:
    """Mean time per batch over consecutive windows of exactly WINDOW batches (a remainder is
    dropped), so every window holds the same share of arch steps."""
    if len(times) < WINDOW:
        raise ValueError(f"--steps must be at least {WINDOW} (one window of batches), got {len(times)}")
    return [statistics.fmean(times[i:i + WINDOW]) for i in range(0, len(times) - WINDOW + 1, WINDOW)]


def refit_ratio(refit: list[float], fp32: list[float], warmup: int) -> float | None:
    """Mean time of the refit configuration's timed steps over whole refit periods (each starting
    at a step that fits: the warm-up's steps count too) against FP32's mean over the same steps;
    None when the timed steps hold no whole period."""
    first = -warmup % REFIT_EVERY
    n = (len(refit) - first) // REFIT_EVERY * REFIT_EVERY
    if n <= 0:
        return None
    span = slice(first, first + n)
    return round(statistics.mean(refit[span]) / statistics.mean(fp32[span]), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="lstm_lm", choices=["lstm_lm", "transformer_lm", "cnn"])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--search_epochs", type=int, default=1,
                    help="epochs of the whole-search wall-time comparison; 0 skips it")
    ap.add_argument("--search_batches", type=int, default=None,
                    help="training batches per epoch in that comparison (default: all)")
    ap.add_argument("--fuse", action="store_true",
                    help="also time the supernet, its refit_every 8 and search_fast with fuse_candidates "
                         "(each group's candidates in one torch.compile'd pass; compiled before the timing)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the steps run (cuda: the first GPU; memory is then the CUDA allocator's peak)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device; valid here: --device cpu")
    device = torch.device(args.device)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    s = setup(args.space, device)
    # the digits' training split has fewer batches than steps: go round it again
    batches = [move_data_to_device(b, device) for b in
               itertools.islice(itertools.cycle(s.data.train_dataloader()), args.warmup + args.steps)]
    search_batch = move_data_to_device(next(iter(s.data.search_dataloader())), device)
    builders: dict[str, Callable[[], Step]] = {
        "fp32": lambda: fp32_step(s), "supernet": lambda: supernet_step(s),
        "supernet_by_group": lambda: supernet_by_group_step(s),
        f"supernet_refit{REFIT_EVERY}": lambda: supernet_refit_step(s),
        "bilevel": lambda: bilevel_step(s, search_batch),
        "bilevel_at_plan": lambda: bilevel_step(s, search_batch, at_plan=True), "kpath": lambda: kpath_step(s),
        "post_training": lambda: post_training_step(s, search_batch),
    }
    # on a GPU the first steps also allocate the libraries' workspaces (cuBLAS, cuDNN), which then
    # stay with the allocator: measure every configuration once to warm them, then again
    for _ in range(2 if device.type == "cuda" else 1):
        memory = {name: peak_memory(build, batches, device) for name, build in builders.items()}
    for k in ARCH_EVERY[1:]:
        builders[f"bilevel_every{k}"] = partial(bilevel_step, s, search_batch, k)
    builders[FAST] = partial(bilevel_step, s, search_batch, FAST_ARCH_EVERY, at_plan=True, refit_every=REFIT_EVERY)
    if args.fuse:  # compiled on first use: built and run once before the timing
        builders["supernet_fused"] = partial(supernet_step, s, fuse=True)
        builders[f"supernet_refit{REFIT_EVERY}_fused"] = partial(supernet_refit_step, s, fuse=True)
        builders[f"{FAST}_fused"] = partial(bilevel_step, s, search_batch, FAST_ARCH_EVERY, at_plan=True,
                                            refit_every=REFIT_EVERY, fuse=True)

    start = time.perf_counter()
    for name, build in builders.items():  # the fused configurations compile their kernels here, on
        if name.endswith("_fused"):       # two batches (two shapes of looked-up embedding rows)
            step = build()
            step(batches[0]), step(batches[1])
    compile_s = time.perf_counter() - start
    steps = {name: build() for name, build in builders.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i, batch in enumerate(batches):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step(batch)
            synchronize(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    operators = {name: operators_per_step(steps[name], batches[-1]) for name in memory  # no every-k: alternates
                 if not name.startswith("supernet_refit")}
    median = {name: statistics.median(t) for name, t in times.items()}
    windows = {name: statistics.median(window_means(t)) for name, t in times.items()}
    fused = {"step_ratio": {"supernet_fused": round(median["supernet_fused"] / median["fp32"], 3)},
             "refit_ratio": {f"supernet_refit{REFIT_EVERY}_fused": refit_ratio(
                 times[f"supernet_refit{REFIT_EVERY}_fused"], times["fp32"], args.warmup)},
             "iteration_ratio": {f"{FAST_CONFIG}_fused": refit_ratio(times[f"{FAST}_fused"], times["fp32"],
                                                                     args.warmup)},
             "compile_s": round(compile_s, 1)} if args.fuse else None
    iterations = {**{f"arch_every_{k}": "bilevel" if k == 1 else f"bilevel_every{k}" for k in ARCH_EVERY},
                  "at_plan": "bilevel_at_plan", "post_training": "post_training"}
    groups = len(search_groups(prepare_search_(make_net(s), s.space)))
    result = {
        "model": f"{s.describe}, candidates {CANDIDATES}, {groups} groups",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": args.steps,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "median_step_s": {k: round(v, 4) for k, v in median.items()},
        "peak_memory_mb": {k: round(v / 2**20, 1) for k, v in memory.items()},
        "step_ratio": {k: round(median[k] / median["fp32"], 3)
                       for k in ("supernet", "supernet_by_group", "bilevel", "bilevel_at_plan", "kpath",
                                 "post_training")},
        "memory_ratio": {k: round(memory[k] / memory["fp32"], 3)
                         for k in ("supernet", "supernet_by_group", "bilevel", "bilevel_at_plan", "kpath",
                                   "post_training")},
        "refit_ratio": {f"supernet_refit{REFIT_EVERY}": refit_ratio(times[f"supernet_refit{REFIT_EVERY}"],
                                                                    times["fp32"], args.warmup)},
        "operators_per_step": operators,
        "iteration_windows": len(window_means(times["fp32"])),
        "iteration_ratio": {**{k: round(windows[name] / windows["fp32"], 3) for k, name in iterations.items()},
                            FAST_CONFIG: refit_ratio(times[FAST], times["fp32"], args.warmup)},
        "fused": fused,
        "goals": {"step_ratio.supernet": 1.20 if args.space == "cnn" else 1.10,
                  f"iteration_ratio.{FAST_CONFIG}": 1.4, "memory_ratio.supernet": 1.2},
    }
    if args.search_epochs > 0:
        result["search_wall"] = search_wall_time(args.search_epochs, args.search_batches, arch_every=ARCH_EVERY,
                                                 accelerator="gpu" if device.type == "cuda" else "cpu")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Cost of a supernet step relative to an FP32 training step, in one process.

On the Tiny Shakespeare LSTM LM (2 x 256 LSTM, 10k vocabulary, batches 32 x 35 of the real corpus),
with candidates {1, 2, 4, 8, 32} on every group (18 groups), it measures per step (forward, loss,
backward, Adam step):
  fp32          the float model;
  supernet      the same model with a soft Gumbel-softmax choice per group: one composite weight
                per layer, one forward;
  bilevel       one whole search iteration: an arch step on a search batch plus a weight step, as
                SupernetModule runs it (two batches, so about twice a step by construction);
  kpath         the reference without the composite weight: K = 5 forward passes, one per
                candidate, their logits mixed by the sample (K quantized weight sets and K sets of
                activations kept for backward).
Step time is the median over --steps steps, the configurations interleaved step by step so
machine noise hits them alike. Peak memory is the peak resident set size during a step (sampled
every 0.2 ms from /proc/self/statm) above the resident size before the model was built, with
free heap memory handed back to the OS (malloc_trim) before each configuration.
Prints JSON; goals: supernet/fp32 step ratio <= 1.15, memory ratio <= 1.3.

    python benchmarks/overhead.py [--steps 15]
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import statistics
import threading
import time
from typing import Callable

import torch
from torch.func import functional_call
from torch.nn import functional as F

from nas_mpq.data import LMDataModule
from nas_mpq.search import GumbelSampler, get_sampler, prepare_search_, search_groups
from search_spaces.lstm_lm import LSTMLM, lstm_lm_space

CANDIDATES = [1, 2, 4, 8, 32]
Step = Callable[[tuple], None]


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def make_net(vocab: int) -> LSTMLM:
    torch.manual_seed(0)
    return LSTMLM(vocab, 256, 256, 2, dropout=0.5).train()


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer) -> Step:
    """Forward, loss, backward and optimizer step on one batch."""
    def step(batch: tuple) -> None:
        x, y, _ = batch
        loss = lm_loss(net(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def fp32_step(vocab: int) -> Step:
    net = make_net(vocab)
    return train_step(net, torch.optim.Adam(net.parameters(), lr=1e-3))


def supernet(vocab: int) -> tuple[LSTMLM, list, list]:
    net = prepare_search_(make_net(vocab), lstm_lm_space(CANDIDATES), sampler=GumbelSampler(tau=1.0))
    theta = [g.choice.theta for g in search_groups(net)]
    weights = [p for p in net.parameters() if all(p is not t for t in theta)]
    return net, weights, theta


def supernet_step(vocab: int) -> Step:
    net, weights, theta = supernet(vocab)
    return train_step(net, torch.optim.Adam([{"params": weights}, {"params": theta}], lr=1e-3))


def bilevel_step(vocab: int, search_batch: tuple) -> Step:
    net, weights, theta = supernet(vocab)
    w_opt, a_opt = torch.optim.Adam(weights, lr=1e-3), torch.optim.Adam(theta, lr=3e-2)

    def step(batch: tuple) -> None:
        for (x, y, _), opt in ((search_batch, a_opt), (batch, w_opt)):
            w_opt.zero_grad()
            a_opt.zero_grad()
            lm_loss(net(x)[0], y).backward()
            opt.step()
    return step


def kpath_step(vocab: int) -> Step:
    """K full forward passes with every group at candidate k, logits mixed by one sample y."""
    net = prepare_search_(make_net(vocab), lstm_lm_space(CANDIDATES))
    groups = search_groups(net)
    sampler = get_sampler(net)
    theta = torch.zeros(len(CANDIDATES), requires_grad=True)
    float_net = make_net(vocab)
    params = dict(float_net.named_parameters())
    opt = torch.optim.Adam([*float_net.parameters(), theta], lr=1e-3)

    def quantized(k: int) -> dict[str, torch.Tensor]:
        out = dict(params)
        for g in groups:
            w = params[g.plan.param]
            q = g.choice.quantizers[k]
            if g.plan.rows is None:
                out[g.plan.param] = q(w)
            else:  # gates are row slices: quantize each, then reassemble the tensor
                out.setdefault(f"__parts:{g.plan.param}", []).append(q(g.plan.view(w)))
        for name in [n for n in out if n.startswith("__parts:")]:
            out[name.split(":", 1)[1]] = torch.cat(out.pop(name), dim=0)
        return out

    def step(batch: tuple) -> None:
        x, y, _ = batch
        mix = sampler.sample(theta)
        logits = sum(mix[k] * functional_call(float_net, quantized(k), (x,))[0] for k in range(len(CANDIDATES)))
        loss = lm_loss(logits, y)
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


def peak_memory(build: Callable[[], Step], batches: list[tuple]) -> int:
    release_free_memory()
    base = rss_bytes()
    step = build()
    step(batches[0])  # optimizer state exists from the first step on
    peak = 0
    for batch in batches[1:3]:
        with PeakRSS() as p:
            step(batch)
        peak = max(peak, p.peak)
    del step
    return peak - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    dm = LMDataModule("tinyshakespeare", max_vocab=10000, batch_size=32, bptt=35)
    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(args.warmup + args.steps)]
    search_batch = next(iter(dm.search_dataloader()))
    vocab = dm.vocab_size
    builders: dict[str, Callable[[], Step]] = {
        "fp32": lambda: fp32_step(vocab), "supernet": lambda: supernet_step(vocab),
        "bilevel": lambda: bilevel_step(vocab, search_batch), "kpath": lambda: kpath_step(vocab),
    }
    memory = {name: peak_memory(build, batches) for name, build in builders.items()}

    steps = {name: build() for name, build in builders.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i, batch in enumerate(batches):
        for name, step in steps.items():
            start = time.perf_counter()
            step(batch)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(json.dumps({
        "model": "lstm_lm 2x256, vocab %d, batch 32x35, candidates %s, %d groups" % (
            vocab, CANDIDATES, len(search_groups(prepare_search_(make_net(vocab), lstm_lm_space())))),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": args.steps,
        "median_step_s": {k: round(v, 4) for k, v in median.items()},
        "peak_memory_mb": {k: round(v / 2**20, 1) for k, v in memory.items()},
        "step_ratio": {k: round(median[k] / median["fp32"], 3) for k in ("supernet", "bilevel", "kpath")},
        "memory_ratio": {k: round(memory[k] / memory["fp32"], 3) for k in ("supernet", "bilevel", "kpath")},
        "goals": {"step_ratio.supernet": 1.15, "memory_ratio.supernet": 1.3},
    }, indent=1))


if __name__ == "__main__":
    main()
